"""Pod security: what every pod lmops renders runs with (context), and the check of the restricted profile."""
