// Pure parts of the browser code, run by node (tests/test_browser.py runs this file).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const comet = require('../../geventcomet/static/geventcomet.js');
globalThis.self = globalThis;
await import('../../geventcomet/static/demo.js');
const { newGame, apply } = globalThis.TicTacToe;

// Full jitter: uniform in [0, min(cap, base * 2^attempt)).
assert.equal(comet.backoffDelay(0, 500, 30000, () => 0.999999) < 500, true);
assert.equal(comet.backoffDelay(3, 500, 30000, () => 0.5), 2000);
assert.equal(comet.backoffDelay(40, 500, 30000, () => 1), 30000);
assert.equal(comet.backoffDelay(5, 500, 30000, () => 0), 0);
// Retry-After: seconds or an HTTP date; it is added to the backoff, never replaced by it.
assert.equal(comet.retryAfterMs('1'), 1000);
assert.equal(comet.retryAfterMs(null), null);
assert.equal(comet.retryAfterMs('soon'), null);
assert.equal(comet.retryAfterMs('Thu, 01 Jan 1970 00:00:10 GMT', 4000), 6000);
assert.equal(comet.reconnectDelay(0, 1000, { minDelay: 500, maxDelay: 30000 }, () => 0.5), 1250);
assert.equal(comet.reconnectDelay(2, null, { minDelay: 500, maxDelay: 30000 }, () => 1), 2000);

// A refused client id: its private channel leaves the cursor, the public positions stay.
assert.equal(comet.withoutPrivate('e1~news~8~@k2J9ab~3'), 'e1~news~8');
assert.equal(comet.withoutPrivate('e1~@k2J9ab~3~news~8~sport~2'), 'e1~news~8~sport~2');
assert.equal(comet.withoutPrivate('e1~@k2J9ab~3'), null);
assert.equal(comet.withoutPrivate(null), null);

// Tokens: a string is sent as it is; a function is asked once, and again only when the
// token it gave was refused (two subscriptions refreshing at once ask it once).
assert.equal(await new comet.TokenSource('abc').get(), 'abc');
assert.equal(await new comet.TokenSource('').get(), '');
let asked = 0;
const tokens = new comet.TokenSource(() => Promise.resolve('t' + (++asked)));
assert.equal(await tokens.get(), 't1');
assert.equal(await tokens.get(), 't1');
assert.equal(asked, 1);
const [a, b] = await Promise.all([tokens.refresh('t1'), tokens.refresh('t1')]);
assert.deepEqual([a, b, asked], ['t2', 't2', 2]);
assert.equal(await tokens.refresh('t1'), 't2', 'a stale refusal does not ask again');
assert.equal(asked, 2);
let failing = true;
const flaky = new comet.TokenSource(() => { if (failing) throw new Error('down'); return 'ok'; });
await assert.rejects(flaky.get(), /down/);
failing = false;
assert.equal(await flaky.get(), 'ok', 'a failed token function is asked again');

// Tic-tac-toe replay: joins, turns, invalid moves ignored, a win, a draw.
const join = (player) => ({ type: 'join', player });
const move = (player, cell) => ({ type: 'move', player, cell });
let g = newGame();
for (const e of [join('a'), join('a'), join('b'), join('c'), move('b', 0), move('a', 0), move('a', 0),
                 move('b', 3), move('a', 1), move('a', 2), move('b', 4), move('c', 5), move('a', 2)]) {
  g = apply(g, e);
}
assert.deepEqual(g.players, { X: 'a', O: 'b' });
assert.deepEqual(g.board, ['X', 'X', 'X', 'O', 'O', null, null, null, null]);
assert.equal(g.winner, 'X');
assert.deepEqual(g.line, [0, 1, 2]);
g = apply(g, move('b', 5));
assert.equal(g.board[5], null, 'no move after the game is won');

g = [join('a'), join('b')].reduce(apply, newGame());
for (const [p, c] of [['a', 0], ['b', 1], ['a', 2], ['b', 4], ['a', 3], ['b', 5], ['a', 7], ['b', 6], ['a', 8]]) {
  g = apply(g, move(p, c));
}
assert.equal(g.winner, 'draw');
assert.equal(apply(newGame(), { type: 'move', player: 'a', cell: 0 }).moves.length, 0, 'no move before two players');
for (const bad of [null, 'x', { type: 'move', player: 'a', cell: 9 }, { type: 'move', player: 'a', cell: 0.5 }]) {
  apply([join('a'), join('b')].reduce(apply, newGame()), bad);
}
console.log('ok');
