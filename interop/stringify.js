'use strict'
// Request: {"json": "<JSON text>"}.
// Reply: {"text": JSON.stringify(JSON.parse(json), null, 2), "compact": JSON.stringify(value),
//         "id": "%" + ssb-keys hash of text} or {"error": "..."} when JSON.parse refuses it.
const ssbKeys = require('ssb-keys')
require('./lines')((req) => {
  let value
  try {
    value = JSON.parse(req.json)
  } catch (err) {
    return { error: err.message }
  }
  const text = JSON.stringify(value, null, 2)
  return { text, compact: JSON.stringify(value), id: '%' + ssbKeys.hash(text) }
})
