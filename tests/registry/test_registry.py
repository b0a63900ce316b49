"""Registry against a real ``mlflow server`` (one per session, see conftest): register, load, download,
tags, aliases, guarded promotion, rollback, lineage, and bad input. Each test uses its own model name."""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest
import torch

from chain import Chain, evaluate, make_chain
from lmops.cli import main
from lmops.config import RegistryConfig
from lmops.gates import check
from lmops.manifest import read_manifest, verify
from lmops.registry import RegistryError, Variant, download_model, register_variants
from lmops.registry.aliases import history_tag
from lmops.registry.version_page import logged_model_id

pytestmark = pytest.mark.slow
PASS_RULES = {"perplexity": {"max_ratio": 1.10}}
FAIL_RULES = {"perplexity": {"max_ratio": 0.5}}  # half the baseline's perplexity: no untrained variant meets it


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    return make_chain(tmp_path_factory.mktemp("chain"))


@pytest.fixture(scope="module")
def evals(chain) -> dict[str, dict]:
    return {"fp32": evaluate(chain.checkpoint, chain.tokens), "pruned": evaluate(chain.pruned, chain.tokens)}


def variants(chain: Chain, evals: dict, pruned_rules=PASS_RULES) -> list[Variant]:
    base = evals["fp32"]
    return [Variant("fp32", chain.checkpoint, base, check(base, base, PASS_RULES)),
            Variant("pruned", chain.pruned, evals["pruned"], check(evals["pruned"], base, pruned_rules))]


def fresh_name() -> str:
    return f"lm-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


@pytest.fixture
def registered(chain, evals, mlflow_server):
    """fp32 (gates passed) and pruned (gates failed) registered under a fresh name."""
    cfg = RegistryConfig(tracking_uri=mlflow_server, model_name=fresh_name())
    reg = register_variants(variants(chain, evals, FAIL_RULES), cfg, pipeline_run_id="run-42")
    return cfg, reg, {v.variant: v.version for v in reg.versions}


def lmops(*argv: str, uri: str) -> int:
    return main([*argv, "--tracking-uri", uri])


# ---------------------------------------------------------------- register, load, download
def test_register_tags_lineage_and_candidate_alias(registered, chain, evals, client):
    cfg, reg, versions = registered
    assert sorted(versions) == ["fp32", "pruned"]
    fp32 = client.get_model_version(cfg.model_name, versions["fp32"])
    pruned = client.get_model_version(cfg.model_name, versions["pruned"])
    t = fp32.tags
    assert t["lmops.variant"] == "fp32" and pruned.tags["lmops.variant"] == "pruned"
    dataset = read_manifest(chain.dataset)
    assert t["lmops.lineage.checkpoint.digest"] == read_manifest(chain.checkpoint).digest
    assert t["lmops.lineage.tokens.digest"] == read_manifest(chain.tokens).digest
    assert t["lmops.lineage.dataset.digest"] == dataset.digest
    assert t["lmops.lineage.sources.digest"] == dataset.inputs["sources"]["digest"]
    assert pruned.tags["lmops.lineage.model.digest"] == read_manifest(chain.pruned).digest
    assert pruned.tags["lmops.lineage.checkpoint.digest"] == t["lmops.lineage.checkpoint.digest"]
    assert t["lmops.pipeline_run_id"] == "run-42"
    assert len(t["lmops.config_digest"]) == 64 and t["lmops.code_version"]
    assert t["lmops.gate.passed"] == "true" and pruned.tags["lmops.gate.passed"] == "false"
    # a handful of tags to filter on; figures, verdicts and paths live in metrics, description and lineage.json
    assert len(t) <= 12 and not [k for k in t if k.startswith("lmops.metric.") or k.endswith((".path", ".counts"))], t
    assert "- FAIL perplexity" in pruned.description and f"version {versions['fp32']}" in pruned.description
    assert f"{evals['fp32']['bits_per_byte']:.3f} bits per byte" in fp32.description
    assert "Pipeline run: `run-42`" in fp32.description
    # candidate: the best *passing* version (pruned failed its gate)
    assert client.get_model_version_by_alias(cfg.model_name, "candidate").version == versions["fp32"]
    assert reg.candidate == versions["fp32"]


def test_a_version_comes_from_its_training_run_and_a_variant_from_a_nested_compress_run(registered, chain, evals,
                                                                                        client):
    """The UI's links: the version's "Source run" is the run that made the model, whose "Registered models"
    list the version (the same run_id); metrics on the run and on the logged model the version points at."""
    cfg, reg, versions = registered
    fp32 = client.get_model_version(cfg.model_name, versions["fp32"])
    pruned = client.get_model_version(cfg.model_name, versions["pruned"])
    train = client.get_run(fp32.run_id)
    # the chain's checkpoint was never tracked: its training run is recorded from the checkpoint, once
    assert train.info.run_name == f"lmops-train-{read_manifest(chain.checkpoint).key[:16]}"
    assert train.data.tags["lmops.train_key"] == read_manifest(chain.checkpoint).key
    assert train.info.status == "FINISHED" and train.data.params["model.d_model"] == "32"
    assert train.data.metrics["perplexity"] == pytest.approx(evals["fp32"]["perplexity"])
    assert train.data.metrics["bits_per_byte"] == pytest.approx(evals["fp32"]["bits_per_byte"])
    listed = client.search_model_versions(f"run_id = '{train.info.run_id}'")  # what the run page lists
    assert (cfg.model_name, versions["fp32"]) in {(mv.name, mv.version) for mv in listed}
    logged = client.get_logged_model(logged_model_id(fp32))
    assert logged.source_run_id == train.info.run_id and fp32.source == f"models:/{logged.model_id}"
    assert {m.key: m.value for m in logged.metrics}["perplexity"] == pytest.approx(evals["fp32"]["perplexity"])
    compress = client.get_run(pruned.run_id)
    assert compress.data.tags["mlflow.parentRunId"] == train.info.run_id  # nested under the training run
    assert compress.info.run_name.startswith("lmops-compress-pruned-")
    assert compress.data.metrics["perplexity"] == pytest.approx(evals["pruned"]["perplexity"])
    # registering again (another model name) finds the same runs instead of adding more
    again = register_variants(variants(chain, evals, FAIL_RULES), cfg.model_copy(update={"model_name": fresh_name()}))
    assert {v.run_id for v in again.versions} == {train.info.run_id, compress.info.run_id}


def test_lineage_json_holds_no_absolute_path(registered, chain, client, tmp_path):
    import mlflow.artifacts

    cfg, reg, versions = registered
    fp32 = client.get_model_version(cfg.model_name, versions["fp32"])
    doc = json.loads(open(mlflow.artifacts.download_artifacts(run_id=fp32.run_id, artifact_path="lineage.json",
                                                              dst_path=str(tmp_path), tracking_uri=client.tracking_uri)).read())
    assert [link["role"] for link in doc["chain"]] == ["checkpoint", "tokens", "dataset", "sources"]
    assert doc["storage"].startswith("file://") and doc["storage"].endswith(str(chain.checkpoint.parent))
    assert [link["path"] for link in doc["chain"]] == ["checkpoint", "tokens", "dataset", "sources"]
    assert str(chain.checkpoint.parent) not in json.dumps(doc["chain"])


def test_pyfunc_loads_by_alias_and_generates_what_the_model_generates(registered, chain, mlflow_server, monkeypatch):
    import mlflow.pyfunc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.model_name}@candidate")
    prompts = ["the registry keeps", "model versions"]
    out = model.predict(prompts, params={"max_new_tokens": 6})
    assert len(out) == 2 and all(isinstance(s, str) and s for s in out)
    # the same greedy continuation straight from the source directory: it is our model, unchanged
    tok = AutoTokenizer.from_pretrained(chain.checkpoint)
    hf = AutoModelForCausalLM.from_pretrained(chain.checkpoint).eval()
    ids = tok(prompts[0], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = hf.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=hf.config.pad_token_id)
    assert out[0] == tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_download_model_gives_the_verified_directory(registered, chain, mlflow_server, tmp_path):
    cfg, _, versions = registered
    dest = download_model(f"models:/{cfg.model_name}/{versions['pruned']}", tmp_path / "served",
                          tracking_uri=mlflow_server)
    assert verify(dest).digest == read_manifest(chain.pruned).digest
    assert (dest / "model.safetensors").read_bytes() == (chain.pruned / "model.safetensors").read_bytes()
    # a damaged local copy is replaced by a fresh download, not trusted
    (dest / "config.json").write_text("{}")
    again = download_model(f"models:/{cfg.model_name}/{versions['pruned']}", dest, tracking_uri=mlflow_server)
    assert verify(again).digest == read_manifest(chain.pruned).digest


def test_registering_the_same_content_again_reuses_the_versions(registered, chain, evals, mlflow_server, client):
    cfg, reg, versions = registered
    again = register_variants(variants(chain, evals, FAIL_RULES), cfg)
    assert {v.variant: v.version for v in again.versions} == versions
    assert all(v.reused for v in again.versions)
    assert len(client.search_model_versions(f"name='{cfg.model_name}'")) == 2


# ---------------------------------------------------------------- promote, rollback
def test_promote_refuses_a_failed_gate_unless_forced_with_a_reason(registered, mlflow_server, client, capsys):
    cfg, _, v = registered
    name = cfg.model_name
    assert lmops("promote", name, v["pruned"], "--alias", "champion", uri=mlflow_server) == 2
    err = capsys.readouterr().err
    assert "refusing to promote" in err and f"version {v['pruned']}" in err and "lmops.gate.passed=false" in err
    assert lmops("promote", name, v["pruned"], "--force", uri=mlflow_server) == 2
    assert "--reason" in capsys.readouterr().err
    with pytest.raises(Exception, match="not found|RESOURCE_DOES_NOT_EXIST|alias"):
        client.get_model_version_by_alias(name, "champion")

    assert lmops("promote", name, v["pruned"], "--force", "--reason", "hotfix: fp32 OOMs on the node",
                 uri=mlflow_server) == 0
    assert client.get_model_version_by_alias(name, "champion").version == v["pruned"]
    tags = client.get_model_version(name, v["pruned"]).tags
    assert tags["lmops.promote.forced"] == "true"
    assert tags["lmops.promote.force_reason"] == "hotfix: fp32 OOMs on the node"


def test_promote_a_passing_version_then_roll_back(registered, mlflow_server, client, capsys):
    cfg, _, v = registered
    name = cfg.model_name
    assert lmops("promote", name, v["fp32"], uri=mlflow_server) == 0  # default alias: champion
    assert lmops("promote", name, v["pruned"], "--force", "--reason", "try the small one", uri=mlflow_server) == 0
    assert client.get_model_version_by_alias(name, "champion").version == v["pruned"]

    assert lmops("rollback", name, "--reason", "error rate up", uri=mlflow_server) == 0
    assert client.get_model_version_by_alias(name, "champion").version == v["fp32"]
    history = json.loads(client.get_registered_model(name).tags[history_tag("champion")])
    assert [(h["action"], h["version"]) for h in history] == [
        ("promote", v["fp32"]), ("promote", v["pruned"]), ("rollback", v["fp32"])]
    assert history[-1]["reason"] == "error rate up" and history[-1]["previous"] == v["pruned"]
    rolled = client.get_model_version(name, v["pruned"]).tags
    assert rolled["lmops.alias.champion.rollback_reason"] == "error rate up"
    capsys.readouterr()
    # nothing before fp32: a second rollback is refused with a message
    assert lmops("rollback", name, uri=mlflow_server) == 2
    assert "no earlier holder" in capsys.readouterr().err


def test_rollback_undoes_an_alias_moved_outside_lmops(registered, mlflow_server, client):
    cfg, _, v = registered
    name = cfg.model_name
    assert lmops("promote", name, v["fp32"], uri=mlflow_server) == 0
    client.set_registered_model_alias(name, "champion", v["pruned"])  # e.g. in the MLflow UI
    assert lmops("rollback", name, "--alias", "champion", uri=mlflow_server) == 0
    assert client.get_model_version_by_alias(name, "champion").version == v["fp32"]
    history = json.loads(client.get_registered_model(name).tags[history_tag("champion")])
    assert [h["action"] for h in history] == ["promote", "external", "rollback"]


# ---------------------------------------------------------------- lineage
def test_lineage_prints_the_chain_down_to_the_raw_sources(registered, chain, mlflow_server, capsys):
    cfg, _, v = registered
    assert lmops("lineage", f"models:/{cfg.model_name}/{v['pruned']}", uri=mlflow_server) == 0
    out = capsys.readouterr().out
    roles = ["variant", "checkpoint", "tokens", "dataset", "sources"]
    positions = [out.index(f"{r} [") if r != "sources" else out.index("sources:") for r in roles]
    assert positions == sorted(positions), out
    for d in (chain.pruned, chain.checkpoint, chain.tokens, chain.dataset):
        assert read_manifest(d).digest[:16] in out and str(d) in out
    assert str(chain.sources) in out
    assert "documents_kept 120" in out and "vocab_size 300" in out and "sparsity 0.5" in out
    assert lmops("lineage", f"models:/{cfg.model_name}@candidate", "--json", uri=mlflow_server) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == v["fp32"] and [c["role"] for c in info["chain"]] == roles[1:]


def test_lineage_takes_name_and_version_like_promote(registered, mlflow_server, capsys):
    cfg, _, v = registered
    assert lmops("lineage", f"models:/{cfg.model_name}/{v['pruned']}", uri=mlflow_server) == 0
    by_uri = capsys.readouterr().out
    assert lmops("lineage", cfg.model_name, v["pruned"], uri=mlflow_server) == 0
    by_args = capsys.readouterr().out
    assert by_args == by_uri and "sources:" in by_args
    assert lmops("lineage", cfg.model_name, v["fp32"], "--json", uri=mlflow_server) == 0
    assert json.loads(capsys.readouterr().out)["version"] == v["fp32"]
    for argv, message in [((cfg.model_name,), "expected NAME VERSION, models:/NAME/VERSION or models:/NAME@ALIAS"),
                          ((f"models:/{cfg.model_name}/1", "1"), "not both"),
                          ((cfg.model_name, "one"), "version must be a number"),
                          ((cfg.model_name, "99"), "has no version 99")]:
        assert lmops("lineage", *argv, uri=mlflow_server) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_lineage_of_a_version_registered_before_lineage_json(chain, mlflow_server, client, capsys):
    """Versions registered by earlier lmops carry the whole chain as tags (paths, stages, counts): still read."""
    from lmops.registry import lineage

    links = lineage.chain_from_manifests(chain.pruned, verify(chain.pruned))
    name = fresh_name()
    client.create_registered_model(name)
    mv = client.create_model_version(name, "s3://models/old", tags={**lineage.to_tags(links), "lmops.variant": "pruned",
                                                                    "lmops.gate.passed": "true"})
    capsys.readouterr()
    assert lmops("lineage", name, mv.version, uri=mlflow_server) == 0
    out = capsys.readouterr().out
    assert f"{chain.checkpoint} (present)" in out and "sparsity 0.5" in out and str(chain.sources) in out


def test_lineage_of_a_version_registered_by_hand_is_a_clear_error(mlflow_server, client, capsys):
    """A version made in MLflow without lmops (no lineage tags): one line naming it and the missing tags."""
    name = fresh_name()
    client.create_registered_model(name)
    mv = client.create_model_version(name, "s3://models/hand-made", tags={"team": "search"})
    client.set_registered_model_alias(name, "champion", mv.version)
    capsys.readouterr()  # MLflow's own log of the creation above
    by_version = f"models:/{name}/{mv.version}"
    for argv, where in [((name, mv.version), by_version), ((by_version,), by_version),
                        ((f"models:/{name}@champion",), f"models:/{name}@champion (version {mv.version})")]:
        assert lmops("lineage", *argv, uri=mlflow_server) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "None" not in err, err
        assert err.startswith(f"lmops lineage: error: {where}: no lineage tags"), err
        assert "lmops.lineage.model.digest" in err, err


# ---------------------------------------------------------------- bad input
def test_unreachable_server_fails_fast_and_clearly(chain, evals):
    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    cfg = RegistryConfig(tracking_uri=uri, model_name="lm", connect_attempts=3, connect_backoff_s=0.2)
    started = time.monotonic()
    with pytest.raises(RegistryError, match=f"MLflow tracking server {uri} is unreachable after 3 attempts"):
        register_variants(variants(chain, evals), cfg)
    assert time.monotonic() - started < 10


def test_invalid_model_name_is_refused_before_contacting_the_server(chain, evals, mlflow_server, client, capsys):
    for bad in ("bad/name", "a:b", "", "-dash-first", "x" * 200):
        with pytest.raises(RegistryError, match="invalid registered model name"):
            register_variants(variants(chain, evals), RegistryConfig(tracking_uri=mlflow_server, model_name=bad))
    assert lmops("lineage", "models:/bad:name@champion", uri=mlflow_server) == 2
    assert "invalid registered model name" in capsys.readouterr().err
    assert not [m for m in client.search_registered_models() if "bad" in m.name or "x" * 50 in m.name]


def test_promoting_a_version_that_does_not_exist(registered, mlflow_server, capsys):
    cfg, _, v = registered
    assert lmops("promote", cfg.model_name, "99", uri=mlflow_server) == 2
    err = capsys.readouterr().err
    assert f"model '{cfg.model_name}' has no version 99" in err and "versions: 1, 2" in err
    assert lmops("promote", "no-such-model", "1", uri=mlflow_server) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_corrupted_model_directory_is_refused_and_nothing_is_registered(chain, evals, mlflow_server, client, tmp_path):
    bad = tmp_path / "checkpoint"
    shutil.copytree(chain.checkpoint, bad)
    weights = bytearray((bad / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # same size, one flipped bit: only the digest can tell
    (bad / "model.safetensors").write_bytes(bytes(weights))
    cfg = RegistryConfig(tracking_uri=mlflow_server, model_name=fresh_name())
    base = evals["fp32"]
    with pytest.raises(RegistryError, match=r"refusing to register variant 'fp32'.*model\.safetensors: sha256"):
        register_variants([Variant("fp32", bad, base, check(base, base, PASS_RULES))], cfg)
    (bad / "manifest.json").unlink()
    with pytest.raises(RegistryError, match="no manifest.json"):
        register_variants([Variant("fp32", bad, base, check(base, base, PASS_RULES))], cfg)
    assert not client.search_registered_models(f"name='{cfg.model_name}'")


def test_register_cli_gates_against_the_champion(chain, evals, mlflow_server, client, tmp_path, capsys):
    name = fresh_name()
    eval_path = tmp_path / "eval.json"
    eval_path.write_text(json.dumps(evals["fp32"]))
    args = ["register", str(chain.checkpoint), "--eval", str(eval_path), "--set", f"registry.model_name={name}",
            "--tracking-uri", mlflow_server, "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["gating"]["baseline"] is None and first["gating"]["passed"] is True
    assert main(["promote", name, first["versions"][0]["version"], "--tracking-uri", mlflow_server]) == 0
    # the pruned model is judged against the champion's recorded perplexity (default gate: <= 1% worse)
    pruned_eval = tmp_path / "pruned-eval.json"
    worse = {**evals["pruned"], "perplexity": evals["fp32"]["perplexity"] * 1.5}
    pruned_eval.write_text(json.dumps(worse))
    capsys.readouterr()
    assert main(["register", str(chain.pruned), "--eval", str(pruned_eval), "--variant", "pruned",
                 "--set", f"registry.model_name={name}", "--tracking-uri", mlflow_server, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["gating"]["baseline"] == f"models:/{name}@champion (version 1)"
    assert second["gating"]["passed"] is False and second["candidate"] is None
    assert client.get_model_version(name, second["versions"][0]["version"]).tags["lmops.gate.passed"] == "false"


def test_candidate_is_the_best_passing_variant_by_the_configured_metric(chain, evals, mlflow_server, client):
    cfg = RegistryConfig(tracking_uri=mlflow_server, model_name=fresh_name())
    reg = register_variants(variants(chain, evals, PASS_RULES), cfg)
    assert all(v.passed for v in reg.versions)
    best = min(("fp32", "pruned"), key=lambda v: evals[v]["perplexity"])
    assert client.get_model_version_by_alias(cfg.model_name, "candidate").tags["lmops.variant"] == best
    # ranked by a metric where higher is better, the other direction applies
    by_speed = cfg.model_copy(update={"model_name": fresh_name(), "rank_by": "eval_tokens_per_s"})
    reg = register_variants(variants(chain, evals, PASS_RULES), by_speed)
    fastest = max(("fp32", "pruned"), key=lambda v: evals[v]["eval_tokens_per_s"])
    assert {v.version: v.variant for v in reg.versions}[reg.candidate] == fastest


# ---------------------------------------------------------------- the compress stage's variants
def test_register_compressed_variants_and_load_the_int8_one(chain, mlflow_server, client, tmp_path, capsys,
                                                            monkeypatch):
    """A real compress stage output (int8 + pruned, no distillation) registered with its fp32 model: one version
    per variant, each gated; the int8 version loads through MLflow alone and generates what lmops' int8
    loader generates; its lineage starts at the variant and reaches the raw sources."""
    import mlflow.pyfunc
    from transformers import AutoTokenizer

    from lmops.compress.quantize import load_quantized
    from lmops.compress.stage import compress_stage
    from lmops.config import config_from_dict
    from lmops.evaluate.stage import evaluate_stage

    name = fresh_name()
    cfg = config_from_dict({"workdir": str(tmp_path), "cache_dir": None,
                            "evaluate": {"block_size": 32, "max_blocks": 4, "batch_size": 4, "latency_prompt_tokens": 8,
                                         "latency_new_tokens": 4, "latency_repeats": 1, "device": "cpu"},
                            "compress": {"distill": {"enabled": False}, "prune": {"sparsity": 0.3, "recovery_steps": 0},
                                         "gates": {"pruned": {"perplexity": {"max_ratio": 0.5}}}}})
    evaluate_stage(cfg, chain.checkpoint, chain.tokens, tmp_path / "eval", log=lambda s: None)
    compressed = compress_stage(cfg, chain.checkpoint, chain.tokens, tmp_path / "compressed", log=lambda s: None).path
    assert main(["register", str(chain.checkpoint), "--eval", str(tmp_path / "eval"), "--compressed", str(compressed),
                 "--set", f"registry.model_name={name}", "--tracking-uri", mlflow_server, "--json"]) == 0
    reg = json.loads(capsys.readouterr().out)
    versions = {v["variant"]: v for v in reg["versions"]}
    assert set(versions) == {"fp32", "int8", "pruned"}
    assert versions["fp32"]["passed"] and versions["int8"]["passed"] and not versions["pruned"]["passed"]
    int8 = client.get_model_version(name, versions["int8"]["version"])
    assert int8.tags["lmops.variant"] == "int8" and int8.tags["lmops.gate.passed"] == "true"
    assert "- PASS perplexity" in int8.description and "<= 1.02" in int8.description
    assert f"made from version {versions['fp32']['version']}" in int8.description
    # the int8 version's run is the compress run of that variant, nested under the checkpoint's training run
    compress_run = client.get_run(int8.run_id)
    assert compress_run.data.tags["lmops.compress_method"] == "quantize"
    assert compress_run.data.tags["mlflow.parentRunId"] == versions["fp32"]["run_id"]
    assert client.get_model_version(name, versions["pruned"]["version"]).tags["lmops.gate.passed"] == "false"
    assert reg["candidate"] in {versions["fp32"]["version"], versions["int8"]["version"]}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{versions['int8']['version']}")
    out = model.predict(["the registry keeps"], params={"max_new_tokens": 6})
    tok = AutoTokenizer.from_pretrained(compressed / "int8")
    q = load_quantized(compressed / "int8")
    ids = tok("the registry keeps", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = q.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=q.config.pad_token_id)
    assert out == [tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)]

    assert lmops("lineage", f"models:/{name}/{versions['int8']['version']}", uri=mlflow_server) == 0
    printed = capsys.readouterr().out
    for role, path in (("variant", compressed / "int8"), ("checkpoint", chain.checkpoint), ("tokens", chain.tokens),
                       ("dataset", chain.dataset)):
        assert role in printed and str(path) in printed, (role, printed)
    assert "sources" in printed


def test_register_refuses_a_compressed_dir_that_changed(chain, mlflow_server, tmp_path):
    from lmops.compress.stage import compress_stage
    from lmops.config import config_from_dict
    from lmops.registry.register import register_dir

    cfg = config_from_dict({"workdir": str(tmp_path), "cache_dir": None,
                            "evaluate": {"block_size": 32, "max_blocks": 2, "latency_repeats": 1, "device": "cpu"},
                            "compress": {"distill": {"enabled": False}, "prune": {"enabled": False}},
                            "registry": {"model_name": fresh_name(), "tracking_uri": mlflow_server}})
    compressed = compress_stage(cfg, chain.checkpoint, chain.tokens, tmp_path / "compressed", log=lambda s: None).path
    eval_path = tmp_path / "eval.json"
    eval_path.write_text((compressed / "fp32_eval.json").read_text())
    (compressed / "int8" / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match=r"--compressed .*int8/config.json"):
        register_dir(chain.checkpoint, eval_path, cfg, compressed=compressed)
