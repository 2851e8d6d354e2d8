"""Run a generated program against its unit tests, out of process, in a sandbox when there is one.

Who says "passed"
    Code running in the same interpreter as the test can do anything the checking code does: exit
    early with status 0, patch builtins, redefine ``check``, trace the test's frames, read the
    checker's memory and descriptors. So no sentinel written from that process can be trusted, and
    the test never shares a process with the program here:

    * the parent starts a trusted *judge* (stdlib only) with two inherited pipes, control
      (parent -> judge) and result (judge -> parent), stdout/stderr going nowhere;
    * the judge makes itself non-dumpable (no ptrace, no ``/proc/<judge>/{mem,fd}`` for same-uid
      processes) and a child subreaper, sets rlimits and forks the *worker*; the worker closes every
      descriptor but its two RPC pipes, drops to a throwaway uid (sandbox as root), installs an audit
      hook (no sockets, no ctypes) and executes the program as module ``program`` (so an
      ``if __name__ == "__main__": ...; exit()`` block does not run, as in HumanEval's own harness);
    * only after the fork does the judge read the per-run token (``secrets.token_hex(16)``) and the
      test source from the control pipe: the worker's memory never held them and it holds no
      descriptor of either pipe, so it can neither read the token nor write to the result pipe;
    * the judge executes the test and calls ``check(candidate)`` with a proxy: each call sends plain
      data (JSON, tagged for tuples, sets, bytes, ...) to the worker and decodes the answer strictly
      into fresh built-in values. Objects whose ``__eq__`` always says True, patched builtins or
      modules, a redefined ``check``, trace hooks, a program that reads the test: none of it reaches
      the judge. Helpers the test takes from the program (``poly``, ``encode_cyclic``) are proxied
      the same way; names of builtins are never taken from the program;
    * when ``check`` returns, the judge writes ``PASS <token>``; any exception, the worker ending by
      any means (``sys.exit``, ``os._exit``, ``SystemExit``, a signal, closing its pipe), a broken
      protocol, a timeout, or a line without this run's token is a failure.

    A forged pass needs control of the judge: in the sandbox it runs under another uid (no signals,
    no ptrace); without one it is protected by PR_SET_DUMPABLE=0, and a worker running as root
    first empties all its capability sets (bounding set included) and sets no_new_privs, so it has
    no CAP_SYS_PTRACE either. Killing the judge only makes the check fail.

What comes back
    ``(passed, reason)``; reason is "passed", "timed out after <t>s" or "failed: <one line>": the
    exception type and message (first line, printable ASCII, <= 120 characters) or what ended the
    program. The program's stdout and stderr are discarded, never echoed.

Containment
    bubblewrap (``sandbox_status()`` says whether it works here): own network, PID, IPC and UTS
    namespaces, no capabilities, read-only system and Python directories only (no $HOME, /root,
    /home, /etc/passwd, repository or host /tmp), writes only to a private 64 MiB tmpfs at /tmp where
    the program runs (nothing it writes reaches the host's disk), ``--die-with-parent``,
    ``--new-session``. As root the program runs under a random uid with RLIMIT_NPROC (a fork bomb
    stops at 64 tasks). Without bubblewrap, running model code needs ``allow_unsandboxed=True`` (the
    CLI's ``--allow-code-execution``) and is rlimits only; the status text lists what that does not
    contain.

Timeouts
    The parent never blocks without a deadline: it waits on the result pipe with ``poll`` until
    ``timeout_s``, then stops (SIGSTOP) and kills (SIGKILL) the whole tree: every descendant of the
    process it started (orphans stay descendants: the judge is a subreaper; in the sandbox the PID
    namespace dies with its init) plus, without sandbox, every process in its session or process
    group or carrying this run's environment marker. Reaping is bounded too.

Layout
    ``check`` (the parent: ``check_program``, ``sandbox_status``, verdict), ``sandbox`` (bubblewrap
    command line and probe, killing the process tree), ``harness`` (bundles the checker into one
    ``python -I -B -c`` program), and the checker itself, standard library only: ``wire`` (values and
    messages across the boundary), ``worker`` (untrusted: runs the program), ``judge`` (trusted: runs
    the test, says "passed").
"""

from edgekit.evaluate.humaneval.check import FIX, check_program, sandbox_status

__all__ = ["FIX", "check_program", "sandbox_status"]
