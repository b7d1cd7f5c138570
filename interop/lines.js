'use strict'
// Shared by the interop scripts: read NDJSON requests from stdin, write one
// JSON reply per line to stdout, in order. One process serves a whole batch.
module.exports = function serve (handle) {
  const chunks = []
  process.stdin.on('data', (chunk) => chunks.push(chunk))
  process.stdin.on('end', () => {
    const out = []
    for (const line of Buffer.concat(chunks).toString('utf8').split('\n')) {
      if (line.trim() === '') continue
      out.push(JSON.stringify(handle(JSON.parse(line))))
    }
    process.stdout.write(out.join('\n') + (out.length ? '\n' : ''))
  })
}
