"""Benchmark: the memory of `nba serve` over many ruleset deploys through `nba.v1.RulesetAdmin/Activate`.

Not a timed test: it prints figures and a verdict for a human or a CI log.

    python loadtests/bench_reload.py [--reloads 1000] [--workers 2] [--decisions-per-reload 5]
                                     [--variants 2 | --distinct] [--sample-every 50] [--snapshot-code]
                                     [--fail-on-miss]

durable_rules keeps about 1.5 MiB of every ruleset version a process has evaluated, even after
`delete_ruleset` (../shared/notes/durable-rules.md). With `--workers 1` a deploy loads a new engine inside the one
process, so it grows with every deploy (of a version served before too); with `--workers N` (N > 1) a deploy
starts a new generation of worker processes and stops the old one, which should keep the memory flat however
many deploys there are.

What it does: a temporary directory (so a fresh embedded database seeded from the bundled sample, and a deploy
folder of its own) holding a copy of the bundled ruleset, then the real server,
`nba serve --workers W --port 0 --log-format json --rulesets <copy>`, and it waits for its `serving` event. Then,
`--reloads` times: Activate the next version (the bundled ruleset and its scenario tests, with another version
string and every rule's reason marked with that version, so each is a distinct hash and the answers tell which
version decided), then `--decisions-per-reload` Decide calls (so the version evaluates facts: that is what
durable_rules keeps). The versions alternate between `--variants` of them, or with `--distinct` every reload is a
new version (the worst case for a single process). After reload 1, every `--sample-every` reloads and after the
last, it waits until the server's process tree is back to its size at start (old workers gone) and samples the
RSS (VmRSS) of the whole tree: the supervisor and every descendant, found through the parent pids in /proc.

Every deploy with workers starts new Python processes, which import the service's code as it is on disk then: on
a working tree someone is editing, `--snapshot-code` serves from a copy of `nba_service` taken at start instead.

The verdict: the tree's RSS after the last reload must be within 10% of its RSS after the first. The exit status
is 1 when a call failed or the server did not stop cleanly; with `--fail-on-miss` it is 2 when the target is
missed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from loadtests.bench_common import load_average, machine_info, rank, read_json_lines
from nba_service._proto.nba.v1 import admin_pb2, admin_pb2_grpc, nba_pb2, nba_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
RULESET = REPO / "rulesets" / "retail-banking.yaml"
TESTS = RULESET.with_name("retail-banking.tests.yaml")
START_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 60.0
LIMIT_PERCENT = 10.0
CUSTOMERS = 1000
MAX_FAILED_IN_A_ROW = 3
MAX_SHOWN = 5  # Decide failures and answers of another version printed as they happen
MIB = 1024 * 1024


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------
# The versions
# --------------------------------------------------------------------------------------------------


def version_text(base: str, version: str) -> str:
    """The bundled ruleset under `version`, every rule's reason ending in " [bench <version>]"."""
    text, versions = re.subn(r"(?m)^  version: .*$", f"  version: {version}", base, count=1)
    text, reasons = re.subn(r'(?m)^(    reason: ")(.*)"$', rf'\1\2{mark(version)}"', text)
    if versions != 1 or reasons == 0:
        raise RuntimeError(f"{RULESET} no longer has the version line or the rule reasons this bench edits")
    return text


def mark(version: str) -> str:
    return f" [bench {version}]"


def version_for(reload: int, variants: int, distinct: bool) -> str:
    """Reload 1, 2, ...: a new version each time with `distinct`, else 100.0.1 .. 100.0.V in turn."""
    return f"100.0.{reload if distinct else (reload - 1) % variants + 1}"


# --------------------------------------------------------------------------------------------------
# The server and its process tree
# --------------------------------------------------------------------------------------------------


def server_command(workers: int, rulesets: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "nba"),
        "serve",
        "--workers",
        str(workers),
        "--port",
        "0",
        "--log-format",
        "json",
        "--rulesets",
        str(rulesets),
    ]


def server_env(code: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBA_")}
    if code is not None:  # ahead of the editable install, whose finder comes after the path
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    return env


def snapshot_code(workdir: Path) -> Path:
    """A copy of the service's package, so edits to the working tree during a long run cannot reach the workers
    every deploy starts; checks that a Python started the way the server is imports it from there."""
    code = workdir / "code"
    shutil.copytree(REPO / "nba_service", code / "nba_service", ignore=shutil.ignore_patterns("__pycache__"))
    probe = [sys.executable, "-c", "import nba_service; print(nba_service.__file__)"]
    ran = subprocess.run(probe, env=server_env(code), cwd=workdir, capture_output=True, text=True, check=True)
    where = ran.stdout.strip()
    if not Path(where).is_relative_to(code):
        raise RuntimeError(f"the copied package is not the one imported: {where}")
    return code


def start_server(
    workdir: Path, command: list[str], code: Path | None
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    log_path = workdir / "server.log"
    env = server_env(code)
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=workdir, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        serving = next((e for e in read_json_lines(log_path) if e.get("event") == "serving"), None)
        if serving is not None:
            return process, serving
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"nba serve did not start; log:\n{log_path.read_text()}")
        time.sleep(0.05)


def stop_server(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(5)


def process_tree(root: int) -> list[int]:
    """`root` and every descendant, through the parent pid of every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])  # after "(comm)": state, ppid, ...
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """VmRSS of one process; 0 for one that is gone (or a zombie, which has none)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class Sample:
    reload: int
    elapsed_s: float
    rss: int
    processes: int
    settled: bool
    root_rss: int  # the supervisor's own (the whole server with --workers 1)


def sample_tree(root: int, processes: int, reload: int, began: float) -> Sample:
    """The tree's RSS once it has `processes` processes again (the old generation of workers gone), or after
    SETTLE_TIMEOUT_S with whatever it has then (marked not settled)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        tree = process_tree(root)
        settled = len(tree) <= processes
        if settled or time.monotonic() > deadline:
            total = sum(rss_bytes(p) for p in tree)
            return Sample(reload, time.monotonic() - began, total, len(tree), settled, rss_bytes(root))
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# The reloads
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    start_rss: int = 0
    start_processes: int = 0
    activate_s: list[float] = field(default_factory=list)
    cycle_s: list[float] = field(default_factory=list)
    reloads_done: int = 0
    activate_errors: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    decide_errors: dict[str, int] = field(default_factory=dict)
    other_version: int = 0  # answers not from the version just activated (an old worker still answering)
    unchanged: int = 0
    wall_s: float = 0.0
    stopped_early: str | None = None
    exit_code: int | None = None


def count(errors: dict[str, int], exc: grpc.RpcError) -> str:
    code = exc.code().name if exc.code() is not None else "UNKNOWN"
    errors[code] = errors.get(code, 0) + 1
    return f"{code}: {exc.details()}"


def reload_loop(args: argparse.Namespace, address: str, pid: int, run: Run) -> None:
    base = RULESET.read_text(encoding="utf-8")
    tests = TESTS.read_text(encoding="utf-8")
    texts: dict[str, str] = {}
    admin_channel = grpc.insecure_channel(address)
    admin = admin_pb2_grpc.RulesetAdminStub(admin_channel)
    # One connection per worker (own subchannel pools), so the kernel can spread the Decide calls over them.
    channels = [
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, args.workers))
    ]
    deciders = [nba_pb2_grpc.NextBestActionStub(channel) for channel in channels]
    call = 0
    failed_in_a_row = 0
    began = time.monotonic()
    last_sample = (0, began)
    try:
        for reload in range(1, args.reloads + 1):
            version = version_for(reload, args.variants, args.distinct)
            if version not in texts:
                texts[version] = version_text(base, version)
            if args.distinct:
                texts = {version: texts[version]}
            request = admin_pb2.ActivateRequest(
                ruleset=admin_pb2.RulesetSource(file_name=RULESET.name, content=texts[version], tests_content=tests)
            )
            started = time.monotonic()
            try:
                response = admin.Activate(request, timeout=args.activate_timeout)
            except grpc.RpcError as exc:
                problem = count(run.activate_errors, exc)
                say(f"reload {reload}: Activate {version} failed after {time.monotonic() - started:.1f} s: {problem}")
                failed_in_a_row += 1
                if reload == 1 or exc.code() == grpc.StatusCode.UNIMPLEMENTED or failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    run.stopped_early = f"Activate failed at reload {reload}: {problem}"
                    return
                continue
            failed_in_a_row = 0
            activated = time.monotonic()
            run.activate_s.append(activated - started)
            if response.unchanged:
                run.unchanged += 1
            for nth in range(1, args.decisions_per_reload + 1):
                call += 1
                request_d = nba_pb2.DecideRequest(
                    customer_id=f"CUST-{(call - 1) % CUSTOMERS + 1:06d}",
                    channel=nba_pb2.AGENT_DESKTOP if call % 2 else nba_pb2.OUTBOUND_DIALER,
                )
                try:
                    answer = deciders[call % len(deciders)].Decide(
                        request_d, timeout=args.decide_timeout, wait_for_ready=True
                    )
                except grpc.RpcError as exc:
                    problem = count(run.decide_errors, exc)
                    if sum(run.decide_errors.values()) <= MAX_SHOWN:
                        say(f"reload {reload}: Decide {nth} of {args.decisions_per_reload} failed: {problem}")
                    continue
                run.decisions += 1
                if answer.ruleset.version != version or not all(
                    a.reason.endswith(mark(version)) for a in answer.actions
                ):
                    run.other_version += 1
                    if run.other_version <= MAX_SHOWN:
                        say(
                            f"reload {reload}: Decide {nth} of {args.decisions_per_reload} answered by version "
                            f"{answer.ruleset.version}, not {version}"
                        )
            run.cycle_s.append(time.monotonic() - started)
            run.reloads_done = reload
            if reload == 1 or reload % args.sample_every == 0 or reload == args.reloads:
                sample = sample_tree(pid, run.start_processes, reload, began)
                run.samples.append(sample)
                done, at = last_sample
                per_reload = (time.monotonic() - at) / (reload - done)
                last_sample = (reload, time.monotonic())
                late = "" if sample.settled else " (old workers not gone yet)"
                say(
                    f"reload {reload:5d}/{args.reloads}  elapsed {sample.elapsed_s:7.1f} s  "
                    f"tree RSS {sample.rss / MIB:7.1f} MiB in {sample.processes} process(es){late} "
                    f"{f'(supervisor {sample.root_rss / MIB:.1f}) ' if args.workers > 1 else ''} "
                    f"{per_reload:5.2f} s/reload  (Activate median "
                    f"{statistics.median(run.activate_s[-max(1, reload - done) :]):.2f} s)"
                )
    except KeyboardInterrupt:
        run.stopped_early = f"interrupted after reload {run.reloads_done}"
        if not run.samples or run.samples[-1].reload != run.reloads_done:
            run.samples.append(sample_tree(pid, run.start_processes, run.reloads_done, began))
    finally:
        run.wall_s = time.monotonic() - began
        for channel in [admin_channel, *channels]:
            channel.close()


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, run: Run) -> bool | None:
    say("")
    if run.stopped_early:
        say(f"stopped early: {run.stopped_early}")
    say(
        f"tree RSS at start (serving, before any reload): {run.start_rss / MIB:.1f} MiB "
        f"in {run.start_processes} process(es)"
    )
    if not run.samples:
        say("no reload completed: nothing to compare")
        return None
    first, last = run.samples[0], run.samples[-1]
    say(f"tree RSS after reload {first.reload}: {first.rss / MIB:.1f} MiB")
    say(f"tree RSS after reload {last.reload}: {last.rss / MIB:.1f} MiB")
    peak = max(run.samples, key=lambda s: s.rss)
    say(f"highest sample: {peak.rss / MIB:.1f} MiB after reload {peak.reload}")
    growth = last.rss - first.rss
    percent = 100.0 * growth / first.rss
    per_reload = growth / MIB / (last.reload - first.reload) if last.reload > first.reload else 0.0
    say(
        f"growth from reload {first.reload} to {last.reload}: {growth / MIB:+.1f} MiB ({percent:+.1f}%), "
        f"{per_reload:+.3f} MiB per reload"
    )
    if args.workers > 1:
        say(
            f"supervisor process alone: {first.root_rss / MIB:.1f} MiB after reload {first.reload}, "
            f"{last.root_rss / MIB:.1f} MiB after reload {last.reload}"
        )
    if not all(s.settled for s in run.samples):
        say("note: some samples were taken with old workers still running (marked above)")
    say(
        f"time per reload: median {statistics.median(run.cycle_s):.3f} s (Activate + "
        f"{args.decisions_per_reload} Decide), Activate alone median {statistics.median(run.activate_s):.3f} s, "
        f"p90 {rank(sorted(run.activate_s), 90):.3f} s, max {max(run.activate_s):.3f} s; "
        f"{run.reloads_done} reloads in {run.wall_s:.1f} s"
    )
    errors = ", ".join(f"{c} {n}" for c, n in run.activate_errors.items()) or "none"
    decide_errors = ", ".join(f"{c} {n}" for c, n in run.decide_errors.items()) or "none"
    say(
        f"calls: Activate errors {errors}; {run.unchanged} unchanged; {run.decisions:,} Decide answered "
        f"(errors: {decide_errors}), {run.other_version} not from the version just activated"
    )
    limit = first.rss * (1 + LIMIT_PERCENT / 100.0)
    passed = last.rss <= limit
    say(
        f"target: tree RSS after reload {last.reload} within {LIMIT_PERCENT:g}% of after reload {first.reload} "
        f"(<= {limit / MIB:.1f} MiB): {last.rss / MIB:.1f} MiB, {percent:+.1f}% -> {'PASS' if passed else 'MISS'}"
    )
    return passed


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reloads", type=int, default=1000, help="deploys through the admin RPC")
    parser.add_argument("--workers", type=int, default=2, help="nba serve --workers")
    parser.add_argument("--decisions-per-reload", type=int, default=5, help="Decide calls after each deploy")
    parser.add_argument("--variants", type=int, default=2, help="distinct versions deployed in turn")
    parser.add_argument("--distinct", action="store_true", help="every reload a new version (worst case)")
    parser.add_argument("--sample-every", type=int, default=50, help="reloads between RSS samples")
    parser.add_argument("--activate-timeout", type=float, default=300.0, help="deadline of each Activate")
    parser.add_argument("--decide-timeout", type=float, default=30.0, help="deadline of each Decide")
    parser.add_argument(
        "--snapshot-code",
        action="store_true",
        help="serve from a copy of nba_service taken at start (edits made to the tree during the run stay out)",
    )
    parser.add_argument("--fail-on-miss", action="store_true", help="exit status 2 when the target is missed")
    args = parser.parse_args(argv)
    if args.reloads < 1 or args.workers < 1 or args.sample_every < 1 or args.decisions_per_reload < 0:
        parser.error("--reloads, --workers and --sample-every must be at least 1, --decisions-per-reload at least 0")
    if not args.distinct and args.variants < 2:
        parser.error("--variants must be at least 2 (deploying the active version again changes nothing)")

    # SIGINT or SIGTERM ends the reloads early and still prints the figures so far (also under nohup ... &,
    # where SIGINT starts ignored).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    info = machine_info(["durable-rules", "grpcio"])
    say(f"command: {shlex.join([sys.executable, *sys.argv])}")
    say(
        f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['python']}, "
        f"durable_rules {info['durable_rules']}, grpcio {info['grpcio']}, load {load_average()}"
    )
    kind = "a new version each reload" if args.distinct else f"{args.variants} versions in turn"
    say(
        f"plan: {args.reloads} reloads ({kind}), {args.decisions_per_reload} Decide after each, "
        f"RSS of the server's process tree after reload 1 and every {args.sample_every}"
    )
    run = Run()
    with tempfile.TemporaryDirectory(prefix=f"nba-bench-reload-w{args.workers}-") as temp:
        workdir = Path(temp)
        rulesets = workdir / "rulesets"
        rulesets.mkdir()
        shutil.copy(RULESET, rulesets / RULESET.name)
        shutil.copy(TESTS, rulesets / TESTS.name)
        command = server_command(args.workers, rulesets)
        say(f"server: {shlex.join(command)}  (cwd {workdir})")
        code = snapshot_code(workdir) if args.snapshot_code else None
        if code is not None:
            say(f"code: a copy of {REPO / 'nba_service'} taken now, first on the server's PYTHONPATH")
        process, serving = start_server(workdir, command, code)
        try:
            time.sleep(1.0)  # let start-up settle before the reference sample
            tree = process_tree(process.pid)
            run.start_processes = len(tree)
            run.start_rss = sum(rss_bytes(p) for p in tree)
            say(
                f"serving on {serving['address']} (pid {process.pid}, workers {serving.get('worker_pids', '-')}); "
                f"tree RSS {run.start_rss / MIB:.1f} MiB in {run.start_processes} process(es)"
            )
            reload_loop(args, serving["address"], process.pid, run)
        finally:
            run.exit_code = stop_server(process)
        say(f"server stopped with SIGTERM: exit code {run.exit_code}")
        if run.exit_code != 0 or run.stopped_early or run.decide_errors or run.activate_errors:
            kept = Path(tempfile.gettempdir()) / f"nba-bench-reload-server-{os.getpid()}.log"
            shutil.copy(workdir / "server.log", kept)
            say(f"server log kept in {kept}; its last lines:")
            say("\n".join(kept.read_text(errors="replace").splitlines()[-15:]))
    passed = report(args, run)
    if run.activate_errors or run.decide_errors or run.exit_code != 0 or run.stopped_early:
        return 1
    if args.fail_on_miss and not passed:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
