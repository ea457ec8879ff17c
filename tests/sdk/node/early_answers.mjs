// The OpenAI Node SDK (openai@5, Node's built-in fetch) against a running refract: sends
// requests that the gateway answers before reading their body to its end, and reports how each
// ended. Driven by tests/sdk/test_early_answers.py (and tests/sdk/test_jwt.py, with JWTs as apiKey).
//
//   node early_answers.mjs '<json: {cases: [{name, baseURL, apiKey, model, imageBytes, tries}]}>'
//
// Prints one JSON line: {"<case name>": {"statuses": {"401": n, ...}, "classes": {...},
// "connection_errors": n, "examples": ["..."]}}. Every request uses maxRetries: 0, so a
// connection error is counted as such instead of being retried.
import OpenAI, { toFile } from "openai";

const spec = JSON.parse(process.argv[2]);

// `len` bytes that start with the PNG signature (the gateway only sniffs the type).
function pngLike(len) {
  const buf = Buffer.alloc(len);
  Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(buf);
  let x = 0x9e3779b9;
  for (let i = 8; i < len; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    buf[i] = x & 0xff;
  }
  return buf;
}

const report = {};
for (const c of spec.cases) {
  const client = new OpenAI({ baseURL: c.baseURL, apiKey: c.apiKey, maxRetries: 0, timeout: 30000 });
  const image = pngLike(c.imageBytes);
  const out = { statuses: {}, classes: {}, connection_errors: 0, examples: [] };
  for (let i = 0; i < c.tries; i++) {
    try {
      await client.images.edit({
        model: c.model,
        prompt: "early answer",
        image: await toFile(image, "image.png", { type: "image/png" }),
      });
      out.statuses["200"] = (out.statuses["200"] ?? 0) + 1;
    } catch (e) {
      const cls = e?.constructor?.name ?? typeof e;
      out.classes[cls] = (out.classes[cls] ?? 0) + 1;
      if (e instanceof OpenAI.APIConnectionError) {
        out.connection_errors += 1;
        if (out.examples.length < 3) {
          out.examples.push(`${cls}: ${e.message} (cause: ${e.cause?.message ?? e.cause} ${e.cause?.cause?.code ?? ""})`);
        }
      } else if (e instanceof OpenAI.APIError && e.status) {
        out.statuses[String(e.status)] = (out.statuses[String(e.status)] ?? 0) + 1;
      } else if (out.examples.length < 3) {
        out.examples.push(`${cls}: ${e?.message ?? e}`);
      }
    }
  }
  report[c.name] = out;
}
console.log(JSON.stringify(report));
