"""No API key reaches code in a sandbox, at any local isolation level or in E2B.

The keys are sentinels (``secrets_probe``). For the local sandbox they are in the environment a fresh
Python process is started with, as an exported variable would be, because ``/proc/<pid>/environ``
shows a process's environment as it was at exec time: a key set later with ``os.environ`` would never
appear there, and the check would prove nothing. Sandboxed code then reads everything it can: its
``os.environ``, the environment blocks of itself, its server, the server's parent (the process that
holds the keys), PID 1 and every visible process, and what a subprocess inherits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from isolation import require_level
from secrets_probe import leaks, sentinels

from agentrl.tools.sandbox import Isolation, LocalSandbox

LEVELS = ("none", "standard", "strong")
TESTS = Path(__file__).resolve().parents[1]

# Runs in a process that holds the keys: one sandbox per available level, one one-shot run and one
# session cell each (a session's worker is forked differently from a one-shot child).
SCRIPT = """
import json, sys, warnings
from agentrl.tools.sandbox import Isolation, LocalSandbox, probe
from secrets_probe import DUMP_CODE
out = {}
for level in sys.argv[1:]:
    if probe()["level"] < Isolation.parse(level):
        continue
    sb = LocalSandbox(isolation=level, strict=level != "none", pool_size=1, prefork=1, timeout=10)
    try:
        session = sb.session()
        out[level] = [sb.run(DUMP_CODE).stdout, session.run(DUMP_CODE).stdout, int(sb.isolation)]
        session.close()
    finally:
        sb.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def keys():
    return sentinels()


@pytest.fixture(scope="module")
def dumps(keys):
    env = {**os.environ, **keys, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *LEVELS], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return {level: (json.loads(a), json.loads(b), lvl) for level, (a, b, lvl) in json.loads(proc.stdout).items()}


@pytest.mark.parametrize("level", LEVELS)
def test_code_in_a_local_sandbox_never_sees_a_key(dumps, keys, level):
    require_level(level)
    *cells, isolation = dumps[level]
    assert isolation == Isolation.parse(level)
    for dump in cells:
        # The probes ran: the sandbox has an environment, just not the caller's.
        assert dump["environ"]["PATH"] and "LANG" in dump["environ"]
        assert not set(dump["environ"]) & set(keys), dump["environ"]
        assert not leaks(json.dumps(dump["environ"]), keys)
        assert not leaks(dump["subprocess"], keys)
        if level == "none":
            # At 'none' the code runs as this user, whose other processes it can read (documented, and
            # LocalSandbox warns when 'auto' lands here): only the sandbox's own processes are judged,
            # and they are readable, so the check is not vacuous.
            own = ("/proc/self/environ", f"/proc/{dump['server']}/environ")
            judged = {path: dump["reads"][path] for path in own}
            assert all(text.startswith("PATH=") for text in judged.values()), judged
            assert "PATH=" in dump["subprocess"]  # subprocesses are allowed here, and inherit nothing
        else:
            # The caller's processes are out of reach too: every read is judged, ancestors included.
            judged = dump["reads"]
            assert f"/proc/{dump['server']}/environ" in judged and "/proc/1/environ" in judged
            assert dump["subprocess"].startswith("refused")  # seccomp: no new processes
        found = {path: leaks(text, keys) for path, text in judged.items() if leaks(text, keys)}
        assert not found, found


def test_auto_isolation_that_falls_to_none_warns_that_keys_are_readable(monkeypatch):
    import agentrl.tools.sandbox.local as local

    facts = dict(local.probe(), seccomp=False, landlock_abi=0, bwrap=False, level=Isolation.NONE)
    monkeypatch.setattr(local, "probe", lambda: facts)
    with pytest.warns(UserWarning, match="API keys included"):
        sb = LocalSandbox(pool_size=1, prefork=0)
    sb.close()
    # Asking for 'none' is a choice, not a surprise: no warning then.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LocalSandbox(isolation="none", pool_size=1, prefork=0).close()
    assert not [w for w in caught if "isolation" in str(w.message)]


def test_e2b_sends_no_key_but_its_own_and_only_to_the_control_plane(monkeypatch, keys):
    from e2b_fake import install

    from agentrl.tools.sandbox.e2b import E2BSandbox

    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    fake = install(monkeypatch, api_key=keys["E2B_API_KEY"])  # the SDK must authenticate with the sentinel
    sb = E2BSandbox(timeout=5, creations_per_second=1000.0)
    # The fake runs cells in this process, so only what the client sends is meaningful: the remote
    # VM's environment is E2B's own, plus whatever env_vars a request would carry.
    code = "import os\nprint(sorted(os.environ.items()))"
    try:
        one_shot = sb.run(code)
        session = sb.session()
        in_session = session.run(code)
        session.close()
    finally:
        sb.close()
        fake.shutdown()
    for res in (one_shot, in_session):
        assert res.ok and "E2B_SANDBOX" in res.stdout, res  # the cell ran and printed the VM's environment
        assert not leaks(res.stdout + res.stderr, keys)
    assert fake.of("create") and fake.of("execute")
    for req in fake.requests:
        headers = dict(req.headers)
        if urlsplit(req.url).hostname.startswith("api."):  # E2B's control plane, not the sandbox
            # The key authenticates the client to E2B's API, in its header and nowhere else.
            assert headers.pop("x-api-key", None) == keys["E2B_API_KEY"], req
        text = req.url + json.dumps(headers) + req.content.decode(errors="replace")
        assert not leaks(text, keys), (req.op, req.url, leaks(text, keys))
    for req in fake.of("create"):
        assert not (req.json or {}).get("envVars"), req.json  # no variables are handed to the VM
    for req in fake.of("execute"):
        assert not req.json.get("env_vars"), req.json
