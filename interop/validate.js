'use strict'
// Request: {"texts": ["<message JSON>", ...], "hmac_key": "<base64>" | null,
//           "state": {"author", "id", "sequence"} | null}
// Appends the messages in order to one ssb-validate state, as a peer would.
// Reply: {"results": [{"ok": true, "id": "%…"} | {"ok": false, "error": "…"}, ...]}
const validate = require('ssb-validate')
require('./lines')((req) => {
  let state = validate.initial()
  if (req.state) {
    state.feeds[req.state.author] = {
      id: req.state.id, sequence: req.state.sequence, timestamp: 0, queue: []
    }
  }
  const hmacKey = req.hmac_key || null
  const results = req.texts.map((text) => {
    let msg
    try {
      msg = JSON.parse(text)
    } catch (err) {
      return { ok: false, error: 'JSON.parse: ' + err.message }
    }
    try {
      state = validate.append(state, hmacKey, msg)
    } catch (err) {
      return { ok: false, error: String(err && err.message) }
    }
    return { ok: true, id: state.queue[state.queue.length - 1].key }
  })
  return { results }
})
