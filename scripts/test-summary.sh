#!/usr/bin/env bash
# Passes cargo test output through and ends it with one total line, "N passed, N failed",
# so the last line of a run says what the whole suite did (not the last doc-test binary's 0).
set -uo pipefail
awk '
  { print; fflush() }
  /^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed;?$/) passed += $i
      if ($(i + 1) ~ /^failed;?$/) failed += $i
      if ($(i + 1) ~ /^ignored;?$/) ignored += $i
    }
  }
  END { printf "\ntests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }
'
