"""Generated code reaches for files, secrets and the network through `code_tests`.

One attack per test case; how attacks are built, run (with a control run without isolation)
and judged is in code_attacks.py. A case skips, naming the layers, when none of the layers that
would stop it is active here (`reward.isolation.probe()`). Processes, system calls and resources:
test_isolation_processes.py; reward functions: test_isolation_reward_functions.py; the judge's
verdict: test_forgery.py.
"""

from __future__ import annotations

import pytest

from reward.isolation import missing_for_strict, strict_message
from tests.adversarial.code_attacks import (
    Attack,
    Runs,
    assert_stopped,
    attack_param,
    attack_runs,
    breach,
)
from tests.adversarial.targets import FILES, NAMESPACES, SCOPES, SECCOMP, SECRET, TCP, environ_of

pytestmark = pytest.mark.skipif(
    bool(missing_for_strict()), reason=strict_message(missing_for_strict() or ["landlock"])
)

ATTACKS = [
    # The file system: reading
    Attack(
        "read_etc_passwd",
        breach('return "root:" in open("/etc/passwd").read()'),
        (FILES,),
        control=True,
    ),
    Attack(
        "read_the_expected_answers",
        breach('return "$secret" in open("$answers").read()'),
        (FILES,),
        control=True,
    ),
    Attack(
        "list_the_home_directory",
        breach('return isinstance(os.listdir("$home"), list)'),
        (FILES,),
        control=True,
    ),
    # The file system: writing
    Attack(
        "write_a_file_outside",
        breach("""
        with open("$planted", "w") as f:
            f.write("planted by generated code")
        return True
    """),
        (FILES,),
        control=True,
        unharmed=lambda t: not t.planted.exists(),
    ),
    Attack(
        "delete_a_file_outside",
        breach('os.remove("$doomed")\nreturn True'),
        (FILES,),
        control=True,
        unharmed=lambda t: t.doomed.exists(),
    ),
    Attack(
        "write_through_a_symlink",
        breach("""
        os.symlink("$root", "escape")
        with open("escape/planted_through_a_link.txt", "w") as f:
            f.write("planted by generated code")
        return True
    """),
        (FILES,),
        control=True,
        unharmed=lambda t: not t.linked.exists(),
    ),
    Attack(
        "write_to_dev_shm",
        breach('open("$shm", "w").close()\nreturn True'),
        (FILES,),
        control=True,
        unharmed=lambda t: not t.shm.exists(),
    ),
    # Secrets
    Attack("secret_in_the_environment", breach('return "$secret" in repr(dict(os.environ))'), ()),
    Attack(
        "secret_in_another_process_environ",
        breach("""
        import glob
        for path in ["/proc/$bystander_pid/environ", *glob.glob("/proc/[0-9]*/environ")]:
            try:
                if b"$secret" in open(path, "rb").read():
                    return True
            except OSError:
                pass
        return False
    """),
        (FILES,),
        control=True,
    ),
    # The network
    Attack(
        "tcp_connect_to_a_listener",
        breach("""
        with socket.create_connection(("127.0.0.1", $tcp_port), timeout=1):
            return True
    """),
        (SECCOMP, TCP, NAMESPACES),
        control=True,
        unharmed=lambda t: t.tcp_connections() == 0,
    ),
    Attack(
        "udp_send",
        breach("""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"$secret", ("127.0.0.1", $udp_port))
        return True
    """),
        (SECCOMP, NAMESPACES),
        control=True,
        unharmed=lambda t: t.udp_datagrams() == 0,
    ),
    Attack(
        "connect_to_an_abstract_unix_socket",
        breach("""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect("\\0$abstract")
        return True
    """),
        (SECCOMP, SCOPES, NAMESPACES),
        control=True,
        unharmed=lambda t: t.abstract_connections() == 0,
    ),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with attack_runs(tmp_path_factory, ATTACKS) as runs:
        yield runs


@pytest.mark.parametrize("attack", [attack_param(a) for a in ATTACKS])
def test_generated_code_attack_is_stopped(attack: Attack, runs: Runs):
    assert_stopped(attack, runs)


def test_the_secret_is_there_to_find(runs: Runs):
    # The secret attacks mean something only if the secret is within reach without isolation:
    # in the bystander process's environment. The harness worker itself never holds it (its
    # forkserver starts with a clean environment).
    assert SECRET.encode() in environ_of(runs.confined_targets.bystander.pid)
    assert SECRET.encode() not in environ_of(runs.workers_before[0])
