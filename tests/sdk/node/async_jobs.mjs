// The OpenAI Node SDK (openai@5) against a running refract's async image edits. The SDK has no
// async-jobs resource: the multipart submit goes through `client.images.edit` with the request
// path of `/async/images/edits` (a request option), the polls through `client.get`, both with
// `.withResponse()` for the HTTP status. Driven by tests/sdk/test_async_jobs.py.
//
//   node async_jobs.mjs '<json: {baseURL, apiKey, model, prompt, imagePath}>'
//
// Prints one JSON line: {"submit": {"status", "body"}, "polls": [status, ...], "done": {...},
// "sync_b64": ["..."]}.
import OpenAI, { toFile } from "openai";
import { readFileSync } from "node:fs";

const spec = JSON.parse(process.argv[2]);
const client = new OpenAI({ baseURL: spec.baseURL, apiKey: spec.apiKey, maxRetries: 0, timeout: 30000 });
const image = readFileSync(spec.imagePath);
const params = async () => ({
  model: spec.model,
  prompt: spec.prompt,
  image: await toFile(image, "input.png", { type: "image/png" }),
});

const submitted = await client.images.edit(await params(), { path: "/async/images/edits" }).withResponse();
const job = submitted.data;
const out = { submit: { status: submitted.response.status, body: job }, polls: [] };
const deadline = Date.now() + 30000;
for (;;) {
  const { data, response } = await client.get(`/async/images/edits/${job.id}`).withResponse();
  out.polls.push(response.status);
  if (response.status === 200) {
    out.done = data;
    break;
  }
  if (Date.now() > deadline) {
    out.done = data;
    break;
  }
  await new Promise((r) => setTimeout(r, 50));
}
const sync = await client.images.edit(await params());
out.sync_b64 = sync.data.map((d) => d.b64_json);
console.log(JSON.stringify(out));
