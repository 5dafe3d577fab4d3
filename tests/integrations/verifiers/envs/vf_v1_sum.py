"""A verifiers 0.4 (`verifiers.v1`) environment: a Taskset of sums and a local harness, a small
agent program run as a subprocess that asks the model through the endpoint and key it is given.
The taskset's `@reward` scores the trace verifiers recorded."""

import sys

import verifiers.v1 as vf
from verifiers.v1.runtimes import PrimeConfig, SubprocessConfig

# The agent program: one chat call to the intercepting endpoint it is given; a reply that is not
# a number crashes it (how a harness failure reaches the caller).
PROGRAM = """
import sys
from openai import OpenAI
base_url, key, model, prompt = sys.argv[1:5]
reply = OpenAI(base_url=base_url, api_key=key).chat.completions.create(
    model=model, messages=[{"role": "user", "content": prompt}]
)
print(int(reply.choices[0].message.content))
"""


class SumData(vf.TaskData):
    answer: str


class SumTask(vf.Task[SumData]):
    @vf.reward
    async def correct(self, trace) -> float:
        answer = trace.branches[-1].messages[-1].content or ""
        return float(answer.strip() == self.data.answer)


class SumTaskset(vf.Taskset[SumTask]):
    def load(self):
        for i, (a, b) in enumerate([(7, 5), (3, 4)]):
            yield SumTask(SumData(idx=i, prompt=f"What is {a} + {b}?", answer=str(a + b)), self.config.task)


class OneCallHarness(vf.Harness[vf.HarnessConfig]):
    """Runs PROGRAM on this machine with verifiers' interception endpoint and secret."""

    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(self, ctx, trace, runtime, endpoint, secret, mcp_urls, data):
        _, prompt = self.resolve_text_prompt(data)
        return await runtime.run_program([sys.executable, "-c", PROGRAM, endpoint, secret, ctx.model, prompt], {})


__all__ = ["OneCallHarness", "SumTaskset"]


def load_environment(runtime: str = "subprocess") -> vf.Env:
    """runtime "prime" (a hosted sandbox) is what rollmesh refuses."""
    config = vf.SingleAgentEnvConfig(
        taskset=vf.TasksetConfig(id=__name__),
        agent=vf.AgentConfig(runtime=SubprocessConfig() if runtime == "subprocess" else PrimeConfig()),
    )
    return vf.load_environment(config)
