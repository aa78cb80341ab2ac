// Validates an AsyncAPI document with the AsyncAPI parser and its Avro schema parser, and checks
// that its channels are exactly the topics given. Usage: node validate.mjs DOC TOPIC...
// Run by `make asyncapi-check` (docs/topics.md); prints every diagnostic, exits 1 on an error.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";
import { AvroSchemaParser } from "@asyncapi/avro-schema-parser";

const [file, ...topics] = process.argv.slice(2);
const parser = new Parser();
parser.registerSchemaParser(AvroSchemaParser());
const { document, diagnostics } = await parser.parse(readFileSync(file, "utf8"));
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code} at ${d.path.join(".")}: ${d.message}`);
}
if (!document || errors.length > 0) {
  console.error(`${file}: ${errors.length} error(s)`);
  process.exit(1);
}
const addresses = document.channels().all().map((c) => c.address()).sort();
const expected = [...topics].sort();
if (JSON.stringify(addresses) !== JSON.stringify(expected)) {
  console.error(`${file}: channels ${addresses} are not the catalogue's ${expected}`);
  process.exit(1);
}
const messages = document.allMessages().all().length;
console.log(`${file}: valid AsyncAPI ${document.version()}; ${addresses.length} channels (every catalogue topic), ${messages} messages, ${document.operations().all().length} operations`);
