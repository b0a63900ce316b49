"""Pure decisions of the operator: (spec, status, observations) -> (new status, actions). No I/O.

Every decision is made by writing it into status; the actions are then derived from that status
(and what was observed), and each is idempotent. The operator records the new status first and acts
second, so one killed at any point re-derives the same actions from the recorded status on restart,
and a transition (a promotion, a rollback) can only happen once: it is a change of status, not an
action.

- ``deployment``: ModelDeployment canary rollout and rollback
- ``training``:   LMTrainingJob phase from its executor's run
- ``status``:     conditions, history and time helpers both use
"""

from lmops.rollout.deployment import (ApplyService, Decision, DesiredService, GateInputs, Notify, Observed,
                                      RecordAliasMove, RevertAlias, ServiceState, decide, desired_service,
                                      invalid_spec, needs_gates)
from lmops.rollout.training import RunState, StartRun, TrainingDecision, decide_training

__all__ = ["ApplyService", "Decision", "DesiredService", "GateInputs", "Notify", "Observed", "RecordAliasMove",
           "RevertAlias",
           "RunState", "ServiceState", "StartRun", "TrainingDecision", "decide", "decide_training",
           "desired_service", "invalid_spec", "needs_gates"]
