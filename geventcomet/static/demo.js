/* Tic-tac-toe over geventcomet: the game is the history of one channel.
 *
 * Every page subscribes to the channel "ttt-GAME" from the start (since=0) and
 * replays its events through `apply`, a pure function, so every page that has read
 * the same events shows the same board. Moves are only sent (publish); a page
 * draws a move when it comes back over Comet, like the opponent's. A page that
 * reloads keeps its player id (sessionStorage, per tab) and replays the history
 * again; one that loses its connection resumes from its cursor. Invalid events
 * (out of turn, taken cell, a third player) are ignored by everyone alike.
 *
 * Events: {type: "join", player: ID} (the first two players are X and O) and
 *         {type: "move", player: ID, cell: 0..8}.
 *
 * On a server with tokens (--token-secret), open the page as /demo?game=G&token=JWT, the
 * token's `channels` and `publish` covering "ttt-G": the page passes it to the client, keeps
 * it for this tab (sessionStorage, so a reload still has it) and takes it out of the address
 * (so neither the history, the Referer of its requests nor the opponent's link carries it).
 */
(function (root) {
  'use strict';

  var LINES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]];

  function newGame() {
    return {players: {X: null, O: null}, board: [null, null, null, null, null, null, null, null, null],
            turn: 'X', winner: null, line: null, moves: []};
  }

  function markOf(game, player) {
    return game.players.X === player ? 'X' : game.players.O === player ? 'O' : null;
  }

  /** Apply one event's data to `game` (in place); anything invalid is ignored. */
  function apply(game, data) {
    if (!data || typeof data !== 'object' || typeof data.player !== 'string') return game;
    if (data.type === 'join') {
      if (markOf(game, data.player)) return game;
      if (!game.players.X) game.players.X = data.player;
      else if (!game.players.O) game.players.O = data.player;
      return game;
    }
    if (data.type !== 'move' || game.winner || !game.players.O) return game;
    var mark = markOf(game, data.player), cell = data.cell;
    if (mark !== game.turn || typeof cell !== 'number' || cell % 1 || cell < 0 || cell > 8 || game.board[cell]) {
      return game;
    }
    game.board[cell] = mark;
    game.moves.push({mark: mark, cell: cell});
    for (var i = 0; i < LINES.length; i++) {
      var l = LINES[i];
      if (game.board[l[0]] && game.board[l[0]] === game.board[l[1]] && game.board[l[1]] === game.board[l[2]]) {
        game.winner = mark;
        game.line = l;
      }
    }
    if (!game.winner && game.moves.length === 9) game.winner = 'draw';
    game.turn = mark === 'X' ? 'O' : 'X';
    return game;
  }

  root.TicTacToe = {newGame: newGame, apply: apply, markOf: markOf};
  if (typeof document === 'undefined') return;  // loaded by node for a unit test

  // -- the page -------------------------------------------------------------

  function randomId(length) {
    var chars = 'abcdefghijkmnpqrstuvwxyz23456789', bytes = new Uint8Array(length), out = '';
    crypto.getRandomValues(bytes);
    for (var i = 0; i < length; i++) out += chars[bytes[i] % chars.length];
    return out;
  }

  var params = new URLSearchParams(location.search);
  var token = params.get('token') || sessionStorage.getItem('ttt-token') || '';
  if (params.has('token')) {  // a credential: out of the address bar, the history and the Referer
    sessionStorage.setItem('ttt-token', token);
    params.delete('token');
    history.replaceState(null, '', '?' + params);
  }
  var gameId = (params.get('game') || '').replace(/[^a-z0-9]/g, '').slice(0, 32);
  if (!gameId) {
    gameId = randomId(8);
    params.set('game', gameId);
    history.replaceState(null, '', '?' + params);
  }
  var player = sessionStorage.getItem('ttt-player') || randomId(12);
  sessionStorage.setItem('ttt-player', player);
  var channel = 'ttt-' + gameId;
  var game = newGame();
  var comet = new GeventComet.Client({url: '', token: token});
  var $ = function (id) { return document.getElementById(id); };

  var demo = root.demo = {game: game, player: player, channel: channel, events: [], gaps: 0, sub: null};

  function render() {
    var me = markOf(game, player);
    for (var i = 0; i < 9; i++) {
      var cell = $('cell-' + i);
      cell.textContent = game.board[i] || '';
      cell.disabled = !!(game.board[i] || game.winner || !me || me !== game.turn || !game.players.O);
      cell.classList.toggle('win', !!(game.line && game.line.indexOf(i) >= 0));
    }
    $('me').textContent = me ? 'You play ' + me : (game.players.O ? 'You are watching' : 'Joining...');
    var status;
    if (game.winner === 'draw') status = 'Draw';
    else if (game.winner) status = game.winner + ' wins' + (me ? (me === game.winner ? ': you win!' : ': you lose') : '');
    else if (!game.players.O) status = 'Waiting for an opponent: send them this page\'s address';
    else status = game.turn + ' to play' + (me === game.turn ? ': your turn' : '');
    $('status').textContent = status;
    $('winner').textContent = game.winner || '';
    $('moves').textContent = game.moves.map(function (m) { return m.mark + (m.cell + 1); }).join(' ');
    document.body.dataset.turn = game.turn;
    document.body.dataset.winner = game.winner || '';
    document.body.dataset.mark = me || '';
  }

  function join() {
    comet.publish(channel, {type: 'join', player: player}).catch(function (err) {
      $('conn').textContent = 'could not join: ' + err.message;
    });
  }

  for (var i = 0; i < 9; i++) {
    (function (cell) {
      $('cell-' + cell).addEventListener('click', function () {
        if (game.board[cell] || markOf(game, player) !== game.turn || game.winner) return;
        // Not drawn here: the move is drawn when it comes back over Comet, in order.
        comet.publish(channel, {type: 'move', player: player, cell: cell}).catch(function (err) {
          $('conn').textContent = 'move not sent: ' + err.message;
        });
      });
    })(i);
  }
  $('share').href = location.href;  // never with this page's token: the opponent needs their own
  $('share').textContent = location.href;
  $('new').href = '?' + new URLSearchParams({game: randomId(8), transport: params.get('transport') || 'longpoll'});

  demo.sub = comet.subscribe([channel], {
    since: 0,  // the whole game: a reloaded page replays every move
    transport: params.get('transport') === 'eventsource' ? 'eventsource' : 'longpoll',
    onEvent: function (e) {
      demo.events.push(e);
      apply(game, e.data);
      render();
    },
    onGap: function () {
      // The server lost history (e.g. a restart without a durable backend): start over
      // from what it still has, and join again.
      demo.gaps++;
      game = demo.game = newGame();
      render();
      join();
    },
    onState: function (state, info) {
      $('conn').textContent = state + (info.reason ? ' (' + info.reason + ')' : '');
      document.body.dataset.conn = state;
    },
    onError: function (err) { $('conn').textContent = 'stopped: ' + err.message; }
  });
  render();
  join();
})(typeof self !== 'undefined' ? self : this);
