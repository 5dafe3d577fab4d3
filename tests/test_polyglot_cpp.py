"""The C++ environment-server helper and client (clients/cpp): the build and its unit tests, the
example bulls-and-cows server passing every `rollmesh conformance` check (idle timeout and drain
included), whole episodes, error reasons and the registry seen from Python, and the C++ `play`
client against both a Python and a C++ environment server. With certificates of `rollmesh certs
init`: the server with mutual TLS passes conformance as the orchestrator, refuses a reader's
episode (PERMISSION_DENIED, MISSING_ROLE) and connections without a certificate of its CA,
registers over TLS in a NATS that maps certificates to users, and `play` plays over mutual TLS.
Real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path

import grpc
import pytest
from rollmesh import bus
from rollmesh.env.client import EnvClient
from rollmesh.errors import DeadlineExceededError, FailedPreconditionError, ResourceExhaustedError
from rollmesh.natsd import EmbeddedNats
from rollmesh.proto.v1 import bus_pb2 as bus_pb
from rollmesh.proto.v1 import environment_pb2 as env_pb
from rollmesh.proto.v1 import environment_pb2_grpc as env_grpc
from rollmesh.proto.v1 import messages_pb2 as msg_pb
from rollmesh.registry import Registry
from rollmesh.rpc_errors import error_info
from rollmesh.security import pki

CPP = Path(__file__).resolve().parents[1] / "clients" / "cpp"
SERVER = CPP / "build" / "bulls-and-cows-server"
PLAY = CPP / "build" / "play"
ROLLMESH = Path(sys.executable).parent / "rollmesh"
SERVER_LINE = re.compile(r"rollmesh env server on (\S+:\d+): (.*)")
TOOLCHAIN_UNAVAILABLE = 3  # setup.sh's exit status when it cannot install the toolchain
FEEDBACK = re.compile(r"Guess (\d{3}): (\d) bulls? and (\d) cows?")
CODES = ["".join(p) for p in permutations("0123456789", 3)]  # in order: the C++ policy's order too
MAX_TURNS = 10


def run(*cmd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module", autouse=True)
def toolchain() -> None:
    """clients/cpp/setup.sh: installs the toolchain if needed and builds everything."""
    result = run(CPP / "setup.sh", timeout=1800)
    if result.returncode == TOOLCHAIN_UNAVAILABLE:
        pytest.skip(f"the C++ toolchain cannot be installed here: {result.stderr.strip()[-500:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert SERVER.is_file() and PLAY.is_file()


class Served:
    """An environment server process, C++ or Python, once it has printed its address line."""

    def __init__(self, argv: list[str | Path], timeout_s: float = 60) -> None:
        self.process = subprocess.Popen([str(a) for a in argv], stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.process.kill()
                raise AssertionError(f"no server line from {argv}: {''.join(self.stderr)[-2000:]}")
            if match := SERVER_LINE.search(line):
                self.address, self.envs = match.group(1), match.group(2)
                return

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:  # read to the end: a full pipe would block the server
            self.stderr.append(line)
            lines.put(line)
        lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> int:
        """SIGTERM; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self, timeout_s: float = 20) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.process.kill()


def cpp_server(*args: str) -> Served:
    return Served([SERVER, "--port", "0", *args])


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    srv = cpp_server()
    yield srv
    assert srv.stop() == 0, "".join(srv.stderr)


# --- the C++ side ---------------------------------------------------------------------------------


def test_cpp_unit_tests_pass() -> None:
    result = run(CPP / "test.sh", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r"^(\d+) passed, (\d+) failed$", result.stdout, re.M)
    assert summary and int(summary.group(1)) >= 31 and summary.group(2) == "0", result.stdout[-3000:]


def test_every_conformance_check_passes() -> None:
    """All checks, the opt-in ones too: the idle timeout (3 s here) and the drain on SIGTERM."""
    srv = cpp_server("--idle-timeout", "3", "--grace", "5")
    try:
        result = run(
            ROLLMESH, "conformance", srv.address, "--json", "--max-wait", "10", "--drain-pid", str(srv.pid), timeout=300
        )
        report = json.loads(result.stdout)
        not_passed = {c["name"]: f"{c['status']}: {c['detail']}" for c in report["checks"] if c["status"] != "PASS"}
        assert not_passed == {}, json.dumps(report, indent=1)
        assert result.returncode == 0 and report["passed"]
        names = {c["name"] for c in report["checks"]}
        assert {"health", "reflection", "malformed", "idle-timeout", "drain", "episode:bulls-and-cows"} <= names
        assert srv.wait() == 0, "".join(srv.stderr)  # the drain check sent SIGTERM
    finally:
        srv.process.kill()


# --- the example server, from Python ---------------------------------------------------------------


def codebreaker(guesses_and_feedback: list[tuple[str, int, int]]) -> str:
    """The first code that agrees with all the feedback so far."""

    def agrees(code: str, guess: str, bulls: int, cows: int) -> bool:
        b = sum(x == y for x, y in zip(code, guess, strict=True))
        return (b, len(set(code) & set(guess)) - b) == (bulls, cows)

    return next(c for c in CODES if all(agrees(c, *f) for f in guesses_and_feedback))


def expected_rewards(guesses: int) -> dict[str, float]:
    return {"solved": 1.0, "efficiency": (MAX_TURNS - guesses + 1) / MAX_TURNS}


async def test_describe_from_python(server: Served) -> None:
    assert server.envs == "bulls-and-cows"
    async with await EnvClient.connect(server.address) as client:
        info = await client.describe()
    assert (info.server.protocol_version, info.server.language) == ("v1", "c++")
    assert info.server.sdk_version == "rollmesh-cpp 1.0.0"
    (env,) = info.environments
    assert (env.name, env.default_split, env.max_turns) == ("bulls-and-cows", "train", MAX_TURNS)
    assert dict(env.splits) == {"train": 200, "test": 40}
    assert env.has_score and not env.has_run_episode and env.kind == env_pb.ENVIRONMENT_KIND_MULTI_TURN
    assert list(env.reward_names) == ["solved", "efficiency"] and len(env.digest) == 64
    assert info.limits.max_concurrent_episodes == 256 and info.limits.max_message_bytes == 16 << 20


async def test_a_codebreaker_cracks_every_test_code(server: Served) -> None:
    async with await EnvClient.connect(server.address) as client:
        tasks = await client.tasks("bulls-and-cows", "test")
        assert len(tasks) == 40 and len({t.answer for t in tasks}) > 30
        for task in tasks:
            async with client.episode("bulls-and-cows", task.task_id, split="test") as ep:
                assert [m["role"] for m in ep.messages] == ["system", "user"]
                feedback: list[tuple[str, int, int]] = []
                while not ep.done:
                    guess = codebreaker(feedback)
                    step = await ep.step(f"My guess: {guess}")
                    match = FEEDBACK.search(step.messages[0]["content"])
                    assert match and match.group(1) == guess, step.messages
                    feedback.append((guess, int(match.group(2)), int(match.group(3))))
                assert guess == task.answer and feedback[-1][1] == 3
                assert step.stop_reason == "done" and step.turn == len(feedback)
                assert step.rewards == expected_rewards(len(feedback))
                assert step.reward == pytest.approx(1 + 0.5 * step.rewards["efficiency"])
                assert step.metrics == {"guesses": len(feedback), "invalid": 0}
                assert step.state == {"solved": True, "guesses": len(feedback)}
                rewards, reward = await client.score("bulls-and-cows", ep.task, ep.messages, step.state)
                assert (rewards, reward) == (step.rewards, step.reward)


async def test_bad_guesses_run_out_of_turns(server: Served) -> None:
    async with await EnvClient.connect(server.address) as client:
        (task,) = await client.tasks("bulls-and-cows", "train", limit=1)
        wrong = next(c for c in CODES if not set(c) & set(task.answer))
        async with client.episode("bulls-and-cows", task.task_id) as ep:
            replies = []
            for action in ["hello", "", "112", "1234", *[wrong] * 6]:
                step = await ep.step(action)  # an empty assistant message is a valid, useless move
                replies.append(step.messages[0]["content"])
            assert step.done and step.stop_reason == "max_turns" and step.turn == MAX_TURNS
            assert step.rewards == {"solved": 0.0, "efficiency": 0.0} and step.reward == 0.0  # scored: not None
            assert step.metrics == {"guesses": 6, "invalid": 4}
            assert all(r.startswith("Not a guess") for r in replies[:4])
            assert replies[4] == f"Guess {wrong}: 0 bulls and 0 cows."
            assert replies[-1].endswith(f"the code was {task.answer}.")
            with pytest.raises(FailedPreconditionError) as after_done:
                await ep.step(task.answer)
            assert after_done.value.reason == "EPISODE_DONE"


async def failed(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The status code, ErrorInfo reason and metadata of a call that must fail."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as e:
        info = error_info(e)
        assert info is not None and info.domain == "rollmesh.dev", f"{e.code()}: no ErrorInfo"
        return e.code(), info.reason, dict(info.metadata)
    raise AssertionError("the call succeeded")


async def episode(stub: env_grpc.EnvironmentServiceStub, *requests: env_pb.EpisodeRequest) -> None:
    """Writes the requests on a new Episode stream, half-closes, and reads it to its end."""
    call = stub.Episode(timeout=10)
    for r in requests:
        await call.write(r)
    await call.done_writing()
    async for _ in call:
        pass


async def test_error_reasons_seen_from_python(server: Served) -> None:
    Code = grpc.StatusCode
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = env_grpc.EnvironmentServiceStub(channel)

        def start(**kw: object) -> env_pb.EpisodeRequest:
            return env_pb.EpisodeRequest(start=env_pb.StartEpisode(**kw))

        def listing(**kw: object) -> object:
            return stub.ListTasks(env_pb.ListTasksRequest(**kw), timeout=10)

        code, reason, meta = await failed(episode(stub, start(env="nope", task_id="train-000")))
        assert (code, reason, meta) == (Code.NOT_FOUND, "UNKNOWN_ENVIRONMENT", {"environments": "bulls-and-cows"})
        got = await failed(episode(stub, start(env="bulls-and-cows", task_id="x", split="dev")))
        assert got == (Code.NOT_FOUND, "UNKNOWN_SPLIT", {"splits": "test,train"})
        got = await failed(episode(stub, start(env="bulls-and-cows", task_id="test-000")))
        assert got[:2] == (Code.NOT_FOUND, "UNKNOWN_TASK")  # test-000 is not in the default split
        bad_code = msg_pb.Task(prompt=[msg_pb.Message(role="user", content="guess")], answer="1123")
        got = await failed(episode(stub, start(env="bulls-and-cows", task=bad_code)))
        assert got[:2] == (Code.INVALID_ARGUMENT, "INVALID_TASK")  # chosen by the environment's on_start
        got = await failed(listing(env="bulls-and-cows", page_size=-1))
        assert got == (Code.INVALID_ARGUMENT, "INVALID_PAGE_SIZE", {"field": "page_size"})
        token = ""
        async for page in listing(env="bulls-and-cows", split="train", page_size=3):
            token = page.next_page_token or token
        assert token and "train" not in token  # opaque
        got = await failed(listing(env="bulls-and-cows", split="test", page_size=3, page_token=token))
        assert got[:2] == (Code.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")  # another split's token
        no_answer = msg_pb.Task(prompt=[msg_pb.Message(role="user", content="guess")])
        got = await failed(stub.Score(env_pb.ScoreRequest(env="bulls-and-cows", task=no_answer), timeout=10))
        assert got == (Code.INVALID_ARGUMENT, "INVALID_FIELD", {"field": "task.answer"})
        got = await failed(stub.RunEpisode(env_pb.RunEpisodeRequest(), timeout=10))
        assert got[:2] == (Code.UNIMPLEMENTED, "NOT_SUPPORTED")
        raw = channel.unary_unary(
            "/rollmesh.v1.EnvironmentService/Describe", request_serializer=bytes, response_deserializer=bytes
        )
        got = await failed(raw(b"\x0a\x7f\x00", timeout=10))
        assert got[:2] == (Code.INVALID_ARGUMENT, "MALFORMED_REQUEST")


async def test_limits_and_idle_timeout_from_the_command_line() -> None:
    srv = cpp_server("--max-episodes", "2", "--idle-timeout", "1.5")
    try:
        async with await EnvClient.connect(srv.address) as client:
            limits = (await client.describe()).limits
            assert (limits.max_concurrent_episodes, limits.episode_idle_timeout_s) == (2, 1.5)
            async with client.episode("bulls-and-cows", "train-000"), client.episode("bulls-and-cows", "train-001"):
                assert (await client.describe()).active_episodes == 2
                with pytest.raises(ResourceExhaustedError) as refused:
                    async with client.episode("bulls-and-cows", "train-002"):
                        pass
                assert refused.value.reason == "EPISODE_LIMIT" and refused.value.metadata == {"limit": "2"}
            # The server frees a slot when it sees the stream end, a moment after the client closes it.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not (await client.describe()).active_episodes:
                    break
                await asyncio.sleep(0.05)
            async with client.episode("bulls-and-cows", "train-000") as ep:  # the slots came back
                await ep.step("012")
                await asyncio.sleep(2.5)  # idle past the server's timeout
                with pytest.raises(DeadlineExceededError) as idle:
                    await ep.step("345")
                assert idle.value.reason == "IDLE_TIMEOUT" and idle.value.metadata == {"idle_timeout_s": "1.5"}
            assert (await client.describe()).active_episodes == 0
    finally:
        assert srv.stop() == 0


async def test_sigterm_with_an_open_episode_exits_zero() -> None:
    srv = cpp_server("--grace", "0.5")
    async with await EnvClient.connect(srv.address) as client:
        async with client.episode("bulls-and-cows", "train-000"):
            assert (await client.describe()).active_episodes == 1
            start = time.monotonic()
            assert srv.stop() == 0
            assert time.monotonic() - start < 10
    assert any("shutting down (1 episodes in flight)" in line for line in srv.stderr), srv.stderr


async def test_registers_and_heartbeats_in_an_existing_bucket() -> None:
    """The bucket's own TTL (1.5 s here) rules: heartbeats every TTL/3 keep the record alive."""
    with EmbeddedNats() as nats:
        async with await Registry.connect(nats.url, ttl_s=1.5) as registry:  # creates the bucket
            srv = cpp_server("--nats", nats.url, "--advertise-host", "localhost", "--max-episodes", "7")
            try:
                async with await EnvClient.connect(srv.address) as client:
                    instance = (await client.describe()).server.instance_id
                (first,) = await registry.list("environment", "bulls-and-cows")
                assert first.address == f"localhost:{srv.address.rsplit(':', 1)[1]}"
                assert (first.instance_id, first.capacity, first.protocol_version) == (instance, 7, "v1")
                assert (first.version, first.kind) == ("1.0.0", bus_pb.SERVICE_KIND_ENVIRONMENT)
                await asyncio.sleep(2.5)  # past the TTL: only the heartbeats keep the record
                (later,) = await registry.list("environment", "bulls-and-cows")
                assert later.heartbeat_at.ToNanoseconds() > first.heartbeat_at.ToNanoseconds()
                assert later.started_at == first.started_at
                assert srv.stop() == 0
                assert await registry.list("environment", "bulls-and-cows") == []  # deregistered on SIGTERM
            finally:
                srv.process.kill()


async def test_creates_the_registry_bucket_when_missing() -> None:
    with EmbeddedNats() as nats:
        srv = cpp_server("--nats", nats.url)
        try:
            async with await Registry.connect(nats.url, ttl_s=99) as registry:
                assert registry.ttl_s == 15  # the creator's TTL, read back from the bucket
                assert len(await registry.list("environment", "bulls-and-cows")) == 1
        finally:
            assert srv.stop() == 0


def test_refuses_to_start_with_bad_flags_a_taken_port_or_no_registry(server: Served) -> None:
    bad = run(SERVER, "--max-episodes", "0")
    assert bad.returncode == 2 and "--max-episodes: expected an integer in 1.." in bad.stderr, bad.stderr
    assert "--idle-timeout S" in bad.stderr  # the usage follows
    port = server.address.rsplit(":", 1)[1]
    taken = run(SERVER, "--port", port, timeout=60)
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
    no_nats = run(SERVER, "--port", "0", "--nats", "nats://127.0.0.1:1", timeout=60)
    assert no_nats.returncode == 1 and "cannot connect to NATS at nats://127.0.0.1:1" in no_nats.stderr


# --- the C++ client ----------------------------------------------------------------------------------


def played_lines(stdout: str) -> dict[str, dict[str, str]]:
    """play's episode lines: task -> {turns, stop, reward, rewards}."""
    lines = [dict(kv.split("=", 1) for kv in line.split()) for line in stdout.splitlines() if line.startswith("task=")]
    return {line.pop("task"): line for line in lines}


async def test_play_bisects_a_python_guess_number_server() -> None:
    srv = Served([ROLLMESH, "env", "serve", "guess-number", "--port", "0"])
    try:
        assert srv.envs == "guess-number"
        result = run(
            PLAY, srv.address, "--env", "guess-number", "--split", "test", "--episodes", "6", "--policy", "bisect"
        )
        assert result.returncode == 0, result.stderr
        assert "(python, rollmesh-python" in result.stdout.splitlines()[0]
        played = played_lines(result.stdout)
        async with await EnvClient.connect(srv.address) as client:
            tasks = await client.tasks("guess-number", "test", limit=6)
        assert sorted(played) == sorted(t.task_id for t in tasks)
        for task in tasks:  # the same bisection, here: how many guesses it takes
            low, high, secret, guesses = int(task.info["low"]), int(task.info["high"]), int(task.answer), 0
            while True:
                guesses += 1
                mid = low + (high - low) // 2
                if mid == secret:
                    break
                low, high = (mid + 1, high) if mid < secret else (low, mid - 1)
            line = played[task.task_id]
            assert (line["stop"], int(line["turns"])) == ("done", guesses)
            assert float(line["reward"]) == pytest.approx(1 + 0.2 / guesses, rel=1e-5)

        missing = run(PLAY, srv.address, "--env", "no-such-env")
        assert missing.returncode == 1
        assert "play: NOT_FOUND UNKNOWN_ENVIRONMENT:" in missing.stderr, missing.stderr
    finally:
        assert srv.stop() == 0


def test_play_cracks_the_cpp_servers_codes(server: Served) -> None:
    result = run(PLAY, server.address, "--split", "test", "--episodes", "40", "--policy", "codebreaker")
    assert result.returncode == 0, result.stderr
    played = played_lines(result.stdout)
    assert len(played) == 40
    for line in played.values():
        guesses = int(line["turns"])
        assert line["stop"] == "done"
        assert line["rewards"] == f"efficiency:{(MAX_TURNS - guesses + 1) / MAX_TURNS:.6g},solved:1"
    answer = run(PLAY, server.address, "--episodes", "3")  # replies the reference answer: one turn
    assert answer.returncode == 0 and answer.stdout.count("turns=1 stop=done reward=1.5 ") == 3, answer.stdout


# --- transport security ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the mesh's identities (`rollmesh certs init`): env, orchestrator, reader, ..."""
    return pki.init(tmp_path_factory.mktemp("certs"))


def identity(certs: Path, name: str) -> list[str]:
    """The TLS flags of an identity of `certs`."""
    return ["--tls-cert", str(certs / f"{name}.pem"), "--tls-key", str(certs / f"{name}-key.pem"),
            "--tls-ca", str(certs / "ca.pem")]  # fmt: skip


def secure_channel(address: str, ca: Path, cert: Path | None = None) -> grpc.Channel:
    """A channel that trusts `ca`, presents `cert` (its key is <name>-key.pem) and checks the
    server's certificate for env.rollmesh."""
    key = cert.with_name(cert.stem + "-key.pem") if cert else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "env.rollmesh")])


def test_conformance_over_mutual_tls(certs: Path) -> None:
    """Every check, idle timeout and drain included, as the orchestrator identity."""
    srv = cpp_server(*identity(certs, "env"), "--idle-timeout", "3", "--grace", "5")
    try:
        result = run(
            ROLLMESH, "conformance", "--json", "--max-wait", "10", "--drain-pid", str(srv.pid),
            *identity(certs, "orchestrator"), srv.address, timeout=300,
        )  # fmt: skip
        report = json.loads(result.stdout)
        not_passed = {c["name"]: f"{c['status']}: {c['detail']}" for c in report["checks"] if c["status"] != "PASS"}
        assert not_passed == {}, json.dumps(report, indent=1)
        assert result.returncode == 0 and report["passed"]
        assert {"health", "reflection", "idle-timeout", "drain"} <= {c["name"] for c in report["checks"]}
        assert srv.wait() == 0, "".join(srv.stderr)  # the drain check sent SIGTERM
    finally:
        srv.process.kill()


def test_roles_and_certificates(certs: Path, tmp_path: Path) -> None:
    srv = cpp_server(*identity(certs, "env"))
    ca = certs / "ca.pem"
    start = env_pb.EpisodeRequest(start=env_pb.StartEpisode(env="bulls-and-cows", task_id="train-000"))
    try:
        with secure_channel(srv.address, ca, certs / "reader.pem") as channel:  # may describe, not play
            reader = env_grpc.EnvironmentServiceStub(channel)
            assert reader.Describe(env_pb.DescribeRequest(), timeout=10).environments[0].name == "bulls-and-cows"
            with pytest.raises(grpc.RpcError) as refused:
                next(reader.Episode(iter([start]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(refused.value)  # type: ignore[arg-type]
        assert info is not None and (info.reason, info.domain) == ("MISSING_ROLE", "rollmesh.dev")
        assert dict(info.metadata) == {"identity": "reader", "required": "orchestrator"}
        assert refused.value.details() == (
            "'reader' may not call /rollmesh.v1.EnvironmentService/Episode: it needs one of the roles orchestrator"
        )
        with secure_channel(srv.address, ca, certs / "orchestrator.pem") as channel:
            started = next(env_grpc.EnvironmentServiceStub(channel).Episode(iter([start]), timeout=10))
            assert started.started.episode_id
        with secure_channel(srv.address, ca, certs / "publisher.pem") as channel:  # reflection needs a role too
            reflect = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=bytes,
                response_deserializer=bytes,
            )
            with pytest.raises(grpc.RpcError) as hidden:
                next(reflect(iter([b"\x3a\x00"]), timeout=10))  # list_services
            assert hidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # no client certificate, another CA's certificate, plaintext: no call gets through
        other = pki.init(tmp_path / "other")
        for what, channel in {
            "no certificate": secure_channel(srv.address, ca),
            "another CA": secure_channel(srv.address, ca, other / "orchestrator.pem"),
            "plaintext": grpc.insecure_channel(srv.address),
        }.items():
            with channel, pytest.raises(grpc.RpcError) as failed:
                env_grpc.EnvironmentServiceStub(channel).Describe(env_pb.DescribeRequest(), timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, (what, failed.value)
    finally:
        assert srv.stop() == 0, "".join(srv.stderr)
    audit = "".join(srv.stderr)
    assert re.search(
        r"rollmesh: audit: access denied: /rollmesh.v1.EnvironmentService/Episode by reader "
        r"from ipv4:127.0.0.1:\d+ \(MISSING_ROLE\)",
        audit,
    ), audit


def test_an_exposed_address_needs_mutual_tls(certs: Path) -> None:
    refused = run(SERVER, "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert refused.returncode == 2
    assert "refusing to serve environments on 0.0.0.0 without TLS and caller authentication" in refused.stderr
    tls_only = ["--tls-cert", certs / "env.pem", "--tls-key", certs / "env-key.pem"]
    refused = run(SERVER, "--host", "0.0.0.0", "--port", "0", *tls_only, timeout=60)
    assert refused.returncode == 2 and "without caller authentication (--tls-ca)" in refused.stderr
    for flags in (["--insecure"], identity(certs, "env")):
        srv = cpp_server("--host", "0.0.0.0", *flags)
        assert srv.stop() == 0, "".join(srv.stderr)


async def test_registers_over_tls(certs: Path) -> None:
    """A NATS that requires client certificates and maps each to a user with its roles'
    permissions (DIR/nats-auth.conf): the env identity may write the registry."""
    with EmbeddedNats(auth_dir=certs) as nats:
        srv = cpp_server("--nats", nats.url, *identity(certs, "env"))
        try:
            nc = await bus.connect(nats.url, tls=pki.member_config(certs, "orchestrator"))
            registry = await Registry.from_client(nc)
            try:
                (record,) = await registry.list("environment", "bulls-and-cows")
                assert record.address == srv.address and record.kind == bus_pb.SERVICE_KIND_ENVIRONMENT
                assert srv.stop() == 0, "".join(srv.stderr)
                assert await registry.list("environment", "bulls-and-cows") == []  # deregistered over TLS
            finally:
                await registry.close()
                await nc.close()
        finally:
            srv.process.kill()
        # without a certificate, or as an identity that may not write the registry, no server
        plain = run(SERVER, "--port", "0", "--nats", nats.url, timeout=60)
        assert plain.returncode == 1 and "cannot connect to NATS" in plain.stderr, plain.stderr
        reader = run(SERVER, "--port", "0", "--nats", nats.url, *identity(certs, "reader"), timeout=60)
        assert reader.returncode == 1 and "permissions violation" in reader.stderr.lower(), reader.stderr


def test_play_over_mutual_tls(certs: Path) -> None:
    """The C++ client against a Python and a C++ server with mutual TLS."""
    python = Served([ROLLMESH, "env", "serve", "arithmetic", "--port", "0", *identity(certs, "env")])
    cpp = cpp_server(*identity(certs, "env"))
    try:
        result = run(PLAY, python.address, "--split", "test", "--episodes", "3", *identity(certs, "orchestrator"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("turns=1 stop=done reward=1 ") == 3, result.stdout
        result = run(PLAY, cpp.address, "--episodes", "2", *identity(certs, "orchestrator"))
        assert result.returncode == 0 and result.stdout.count("stop=done reward=1.5 ") == 2, result.stdout
        for address in (python.address, cpp.address):
            refused = run(PLAY, address, *identity(certs, "reader"))
            assert refused.returncode == 1 and "play: PERMISSION_DENIED MISSING_ROLE:" in refused.stderr, refused.stderr
            plain = run(PLAY, address)
            assert plain.returncode == 1 and "play: UNAVAILABLE" in plain.stderr, plain.stderr
    finally:
        assert python.stop() == 0
        assert cpp.stop() == 0
