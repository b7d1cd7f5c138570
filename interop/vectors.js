'use strict'
// Regenerates tests/vectors/ssb-reference.json from the pinned JS reference:
//   cd interop && npm ci && node vectors.js > ../tests/vectors/ssb-reference.json
// Every input below is JSON text, so JavaScript parses it exactly as a peer would.
const ssbKeys = require('ssb-keys')
const validate = require('ssb-validate')

const controls = Array.from({ length: 32 }, (_, i) => '\\u' + i.toString(16).padStart(4, '0')).join('')

const stringifyInputs = [
  // numbers: Number.prototype.toString layout, -0, shortest round trip
  '[0, -0, -0.0, 1, -1, 1.0, 1.5, 0.1, 0.2, 0.3, 4.35, 100, 1e2, 2e-0, 12345.6789e-3]',
  '[1e21, 1e+21, 1e20, 123456789012345680000.0, 9.999999999999999e20, 1e300, 1.7976931348623157e308]',
  '[1e-6, 0.000001, 1e-7, 1.5e-7, 0.0000012345, 5e-324, 2.2250738585072014e-308, 1e-400]',
  '[9007199254740991, -9007199254740991, 9007199254740992.0, 1152921504606846976.0, 0.1e1]',
  // integer literals beyond 2^53 that are exactly how JavaScript writes the double
  '[9007199254740992, -9007199254740992, 123456789012345680000, 100000000000000000000]',
  // strings: every escape JSON.stringify writes, and the characters it does not escape
  '"' + controls + '"',
  '["\\"", "\\\\", "/", "\\/", "\\u007f", "\\u2028\\u2029", "é", "€", "😀", "\\ud83d\\ude00", "\\uFEFF", "\\u00e9"]',
  // nesting and empty containers
  '{"a": {"b": [1, [2, {}], []], "c": {}}, "d": [], "": {"": [[[]]]}}',
  '[]', '{}', '[[]]', '[{}]', '{"a":[]}', '"x"', 'true', 'false', 'null', '3.14',
  // array-index keys come first in JavaScript, in numeric order
  '{"b": 1, "10": 2, "2": 3, "a": 4, "01": 5, "4294967294": 6, "4294967295": 7, "-1": 8, "1.5": 9, "0": 10}',
  // the id hashes the low byte of each UTF-16 unit: "€" (U+20AC) hashes as 0xAC
  '{"type": "€uro"}', '{"type": "😀 emoji"}', '{"type": "latin1 é"}'
]

const stringify = stringifyInputs.map((json) => {
  const text = JSON.stringify(JSON.parse(json), null, 2)
  return { json, text, compact: JSON.stringify(JSON.parse(json)), id: '%' + ssbKeys.hash(text) }
})

// JSON that JavaScript reads but chainmail refuses on purpose (DESIGN §2), with
// what JavaScript makes of it: rounded integers, a lone surrogate, a duplicate
// key, an overflow to Infinity (written as null).
const refusedInputs = [
  '[9007199254740993]', '[-9007199254740993]', '[18446744073709551616]',
  '[1000000000000000000000000000000]', '[123456789012345678901]',
  '["\\ud800"]', '["\\udc00x"]', '{"a": 1, "a": 2}', '{"x": {"b": 1, "b": 1}}', '[1e400]', '[-1e400]'
]
const refused = refusedInputs.map((json) => ({ json, text: JSON.stringify(JSON.parse(json), null, 2) }))

const feedInputs = [
  {
    seed: Buffer.alloc(32, 1).toString('base64'),
    hmac_key: null,
    contents: [
      '{"type": "post", "text": "hello"}',
      '{"type": "post", "text": "€ 😀 é", "n": 0.1, "big": 1e21, "tiny": 5e-324, "neg": -0, "exp": 1e-7}',
      '{"type": "x-y/z", "nested": {"a": [1, 2, {"b": null}], "e": {}, "f": []}, "ctl": "' + controls + '\\"\\\\\\u007f\\u2028"}',
      '"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=.box"',
      '{"type": "idx", "2": "b", "1": "a", "z": true}',
      '{"type": "' + 'x'.repeat(52) + '"}'
    ],
    timestamps: [1700000000000, 1700000000001.5, 1700000000002, 1700000000003, 1700000000004, 1e21]
  },
  {
    seed: Buffer.alloc(32, 2).toString('base64'),
    hmac_key: Buffer.alloc(32, 7).toString('base64'),
    contents: ['{"type": "post", "text": "on another network"}', '{"type": "abc", "x": [0.5]}'],
    timestamps: [1, 2]
  }
]

const feeds = feedInputs.map((input) => {
  const keys = ssbKeys.generate('ed25519', Buffer.from(input.seed, 'base64'))
  let state = validate.initial()
  input.contents.forEach((content, i) => {
    state = validate.appendNew(state, input.hmac_key, keys, JSON.parse(content), input.timestamps[i])
  })
  return {
    seed: input.seed,
    hmac_key: input.hmac_key,
    author: keys.id,
    texts: state.queue.map((kvt) => JSON.stringify(kvt.value, null, 2)),
    ids: state.queue.map((kvt) => kvt.key)
  }
})

const out = {
  source: 'interop/vectors.js with ' + ['ssb-validate', 'ssb-keys'].map(
    (name) => name + '@' + require(name + '/package.json').version).join(', ') +
    ', node ' + process.version,
  stringify,
  refused,
  feeds
}
process.stdout.write(JSON.stringify(out, null, 2) + '\n')
