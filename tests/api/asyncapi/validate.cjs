// Validates an AsyncAPI document with AsyncAPI's own parser (@asyncapi/parser: the document's
// structure, references, bindings, examples, and its Spectral rules), then checks payloads the
// broker really sent against the schemas of the messages the test says they are.
//
//   node validate.cjs <modules-dir> <document.json> [<samples.json>]
//
// <modules-dir> holds node_modules (npm ci of this directory's package.json). <samples.json> is
// {"<message id>": [payload, ...], "<message id>:headers": [headers, ...]}. Prints one JSON object: {"diagnostics": [{severity, code,
// message, path}], "samples": [{message, index, errors}]} (severity 0 error, 1 warning, 2 info,
// 3 hint). Exits 0 when it could check; the caller judges the findings.
'use strict';
const fs = require('fs');

const [modules, documentPath, samplesPath] = process.argv.slice(2);
const load = (name, from) => require(require.resolve(name, { paths: [from] }));
const parserDir = modules;
const { Parser } = load('@asyncapi/parser', parserDir);
const parserRoot = require.resolve('@asyncapi/parser', { paths: [parserDir] });
// The parser's own Ajv, so that no second validator is installed.
const Ajv = load('ajv', parserRoot);

(async () => {
  const text = fs.readFileSync(documentPath, 'utf8');
  const { document, diagnostics } = await new Parser().parse(text);
  const out = {
    diagnostics: diagnostics.map((d) => ({
      severity: d.severity,
      code: d.code,
      message: d.message,
      path: d.path.join('/'),
    })),
    samples: [],
  };
  if (document && samplesPath) {
    const samples = JSON.parse(fs.readFileSync(samplesPath, 'utf8'));
    const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
    const byId = new Map(document.allMessages().all().map((m) => [m.id(), m]));
    for (const [key, payloads] of Object.entries(samples)) {
      // `<id>:headers` holds header objects, checked against the message's headers schema.
      const [id, part] = key.split(':');
      const message = byId.get(id);
      const schema = message && (part === 'headers' ? message.headers() : message.payload());
      if (!schema) {
        out.samples.push({ message: key, index: -1, errors: ['no such message (or part) in the document'] });
        continue;
      }
      const validate = ajv.compile(schema.json());
      payloads.forEach((payload, index) => {
        const ok = validate(payload);
        out.samples.push({
          message: key,
          index,
          errors: ok ? [] : validate.errors.map((e) => `${e.instancePath} ${e.message}`),
        });
      });
    }
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e));
  process.exit(2);
});
