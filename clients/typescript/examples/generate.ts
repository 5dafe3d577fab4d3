// Calls a model on an inference server: model info, a chat generation with per-token logprobs,
// then the same prompt as token ids.
//   node dist/examples/generate.js 127.0.0.1:50061 "What is 2 + 2?"
import { InferenceClient } from "../src/index.js";

async function main(address: string, question: string): Promise<void> {
  const llm = new InferenceClient(address, { timeoutS: 60 });
  try {
    const info = await llm.modelInfo();
    console.log(
      `model ${info.model} (${info.backend}), context ${info.contextLength}, policy version ${info.policyVersion}`,
    );

    const messages = [{ role: "user", content: question }];
    const out = await llm.generate({ messages, sampling: { maxTokens: 16, temperature: 0, logprobs: true } });
    console.log(`text: ${JSON.stringify(out.text)} (finish: ${out.finishReason}, policy version ${out.policyVersion})`);
    console.log(`prompt ids: ${out.promptIds.length}, completion ids: ${JSON.stringify(out.completionIds)}`);
    console.log(`logprobs: ${JSON.stringify(out.logprobs.map((l) => Number(l.toFixed(3))))}`);

    // The chat template applied by the server, as token ids: generating from them gives the same tokens.
    const { tokenIds } = await llm.tokenize({ messages, addGenerationPrompt: true });
    const again = await llm.generate({ promptIds: tokenIds, sampling: { maxTokens: 16, temperature: 0 } });
    console.log(
      `from token ids: same completion = ${JSON.stringify(again.completionIds) === JSON.stringify(out.completionIds)}`,
    );
  } finally {
    llm.close();
  }
}

const [address, question = "What is 2 + 2?"] = process.argv.slice(2);
if (!address) {
  console.error('usage: generate.js HOST:PORT ["question"]');
  process.exit(2);
}
main(address, question).catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
