// The reference side of gpt2_encoder_corpus_test.sh: tokenizes a JSONL
// corpus with the npm package gpt-3-encoder (a JavaScript port of OpenAI's
// GPT-2 encoder.py, independent of our C++ tokenizer) and writes one
// {"id": ..., "ids": [...]} line per document, as `rag tokenize --corpus`
// does. Documents with empty text are skipped, as our corpus reader skips
// them; a line without an "id" is an error (the comparison matches by id).
//
// Usage: node gpt3_encoder_tokenize.js GPT3_ENCODER_PACKAGE_DIR CORPUS.jsonl > ids.jsonl
'use strict';
const fs = require('fs');
const path = require('path');

const [pkgDir, corpusPath] = process.argv.slice(2);
if (!pkgDir || !corpusPath) {
  console.error('usage: node gpt3_encoder_tokenize.js GPT3_ENCODER_PACKAGE_DIR CORPUS.jsonl');
  process.exit(2);
}
const { encode } = require(path.resolve(pkgDir));

const lines = fs.readFileSync(corpusPath, 'utf-8').split('\n');
const out = [];
lines.forEach((line, i) => {
  if (line.trim() === '') return;
  const doc = JSON.parse(line);
  if (doc.id === undefined || doc.id === null) {
    console.error(`${corpusPath}:${i + 1}: no "id"`);
    process.exit(1);
  }
  if (typeof doc.text !== 'string' || doc.text.length === 0) return;
  out.push(JSON.stringify({ id: String(doc.id), ids: encode(doc.text) }));
});
process.stdout.write(out.length ? out.join('\n') + '\n' : '');
