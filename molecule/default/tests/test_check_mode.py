"""--check --diff on the converged host: the claim that it changes nothing, tested (issue 12).

Runs first among the scenario's tests (they restart Docker and the container), right after
molecule's idempotence step, on the host exactly as site.yml left it.
"""

import re

from llmops_testlib import recap, run_playbook


def test_check_diff_on_the_converged_host_changes_nothing(host):
    result = run_playbook("site.yml", check=True)
    assert result.returncode == 0, result.output[-3000:]
    changed = re.findall(r"^changed: \[[^\]]+\].*$|^TASK \[.*\]", result.output, re.M)
    # the task heading before each "changed:" line names what check mode would change
    named = [changed[i - 1] for i, line in enumerate(changed) if line.startswith("changed:") and i > 0]
    assert recap(result.output, host.backend.get_hostname())["changed"] == 0, named
    assert "--- before" not in result.output, "a diff was shown for a converged host:\n" + result.output[-3000:]
