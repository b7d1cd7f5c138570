'use strict'
// Request: {"seed": "<base64 32 bytes>", "hmac_key": "<base64>" | null,
//           "contents": [...], "timestamps": [...]}
// Creates one feed with ssb-validate.create (signing by ssb-keys).
// Reply: {"author": "@…", "msgs": [...], "ids": ["%…"], "texts": [JSON.stringify(msg, null, 2)]}
const ssbKeys = require('ssb-keys')
const validate = require('ssb-validate')
require('./lines')((req) => {
  const keys = ssbKeys.generate('ed25519', Buffer.from(req.seed, 'base64'))
  const hmacKey = req.hmac_key || null
  let state = validate.initial()
  const msgs = []
  const ids = []
  req.contents.forEach((content, i) => {
    state = validate.appendNew(state, hmacKey, keys, content, req.timestamps[i])
    const kvt = state.queue[state.queue.length - 1]
    msgs.push(kvt.value)
    ids.push(kvt.key)
  })
  return { author: keys.id, msgs, ids, texts: msgs.map((m) => JSON.stringify(m, null, 2)) }
})
