#!/bin/bash
# Issue 13, item 4: with become (real sudo, "Defaults use_pty"), a SIGKILLed
# agent leaves no installer running (tests/agent/become_kill.py on one hub).
# usage: test-become-kill.sh AGENT
AGENT=$(realpath "$1")
. "$(dirname "$0")/../fleet/lib.sh"
step "fleet up --hubs 1 (fleet $HF_TEST_ID)"
fleet up --hubs 1 > /dev/null || { echo "FAIL - fleet up"; exit 1; }
$PY "$(dirname "$0")/become_kill.py" "$AGENT" "$HF_TEST_ID" "$HF_FLEET"
