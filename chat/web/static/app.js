// The chat web client: the JSON line protocol (protocol.md) over a WebSocket at /ws.
// Safe by construction: every text from the network reaches the page through textContent or a
// text node, never as HTML; links are <a> elements built here, http(s) only. No build step.
'use strict';

(() => {
  const STORE_KEY = 'chat.session';
  const MAX_DOM = 400; // lines of the open buffer in the page at most, however long the session
  const MAX_KEPT = 3000; // lines kept per buffer in memory; older ones are fetched again on demand
  const PAGE = 100; // lines shown or fetched per step back in time
  const LINK = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  const COMMANDS = ['/join', '/part', '/msg', '/query', '/me', '/topic', '/nick', '/kick', '/ban', '/unban',
    '/mute', '/unmute', '/op', '/deop', '/voice', '/devoice', '/away', '/back', '/who', '/list', '/close',
    '/search', '/logout', '/help'];
  const ROLE_RANK = { admin: 0, owner: 1, op: 2, voice: 3 };
  const ROLE_MARK = { admin: '&', owner: '~', op: '@', voice: '+' };
  // A line said is sent again after a reconnect until its echo comes, but not once the server may
  // have forgotten its cid (10 minutes at least): then it could be kept twice.
  const RESEND_WITHIN = 600000;
  const READ_EVERY = 1500; // read markers go to the server at most this often (each line is paced)
  const JUMP_PAGE = 500; // the most history lines one request brings (the server's limit)
  const JUMP_FARTHEST = 2000; // a search result further back than this is not fetched line by line

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const fold = (name) => String(name).toLowerCase();

  // --- what the page keeps between visits (localStorage): never a password --------------------

  function loadSaved() {
    try {
      return JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
    } catch (e) {
      return null;
    }
  }

  const state = {
    ws: null,
    connected: false, // a welcome came back on the current socket
    wanted: false, // the user is logged in: reconnect when the socket drops
    retry: 0,
    retryTimer: null,
    inbox: '', // text of a frame after its last newline (lines never span frames, but be lenient)
    me: null,
    token: null,
    account: false,
    firstRoom: 'lobby',
    password: null, // only between the login form and the welcome; never stored
    registerWith: null,
    buffers: new Map(), // key -> buffer; rooms by folded name, conversations by '@' + folded name
    order: [], // keys in the sidebar's order
    active: null,
    privateSince: 0,
    // Lines said whose echo has not come (typed offline, or sent as the socket dropped), by cid in
    // the order said: each is sent again after the rooms are joined again, and kept once by its cid.
    unechoed: new Map(),
    cidPrefix: Math.random().toString(36).slice(2, 8),
    cids: 0,
    readTimer: null,
    readSentAt: 0, // when a read marker last went to the server
    search: null, // the search in the panel: {text, room, more, lines}
    searchLeft: 0, // matching lines still to come: never news of a room, even with the panel closed
    fresh: true, // the first connection of this page: the "new since you left" markers come from storage
  };

  function save() {
    if (!state.me) return;
    const rooms = [];
    const lastIds = {};
    const readIds = {};
    const conversations = [];
    for (const key of state.order) {
      const buffer = state.buffers.get(key);
      if (buffer.kind === 'room') {
        if (buffer.joined) rooms.push(buffer.name);
        if (buffer.lastId) lastIds[buffer.name] = buffer.lastId;
        readIds[buffer.name] = buffer.readId;
      } else {
        conversations.push(buffer.name);
      }
    }
    const active = state.buffers.get(state.active);
    localStorage.setItem(STORE_KEY, JSON.stringify({
      name: state.me, token: state.token, rooms, lastIds, readIds, conversations,
      privateSince: state.privateSince, active: active ? active.key : null,
      unechoed: [...state.unechoed.values()],
    }));
  }

  // --- buffers: a room or a private conversation, its lines, its unread count ---------------

  function keyOf(kind, name) {
    return kind === 'room' ? fold(name) : '@' + fold(name);
  }

  function buffer(kind, name, make = true) {
    const key = keyOf(kind, name);
    let found = state.buffers.get(key);
    if (!found && make) {
      found = {
        key, kind, name, lines: [], lastId: 0, readId: 0, marker: null, unread: 0, mention: false,
        joined: false, topic: '', users: new Map(), replay: 0, older: 0, more: null,
        shownFrom: 0, oldestId: null, fetching: false,
      };
      state.buffers.set(key, found);
      state.order.push(key);
      renderRooms();
    }
    return found || null;
  }

  function removeBuffer(key) {
    state.buffers.delete(key);
    state.order = state.order.filter((k) => k !== key);
    if (state.active === key) state.active = null;
    if (!state.active && state.order.length) activate(state.order[0]);
    renderRooms();
    save();
  }

  // A line: {id (numbered) or seq (after the last numbered line), time, kind, ...}; lines of a
  // buffer stay sorted by position, so a replay, a history page or a live line land in their place
  // and a line seen twice (a resume) is kept once.
  function position(line, buf) {
    if (line.id) return line.id;
    buf.seq = (buf.seq || 0) + 1;
    return (buf.lastId || 0) + 0.5 - 1 / (buf.seq + 1);
  }

  function addLine(buf, line, live) {
    line.at = position(line, buf);
    const lines = buf.lines;
    let index = lines.length;
    if (line.id) {
      while (index > 0 && lines[index - 1].at > line.at) index -= 1;
      const same = index > 0 ? lines[index - 1] : null;
      // Seen already (a resume's overlap); the same id with other words is a numbering that started over.
      if (same && same.at === line.at && same.name === line.name && same.msg === line.msg) return false;
      if (line.id > buf.lastId) buf.lastId = line.id;
    }
    lines.splice(index, 0, line);
    if (index < buf.shownFrom) buf.shownFrom += 1;
    if (lines.length > MAX_KEPT) {
      // Memory stays bounded too: the oldest lines go (scrolling back fetches them again).
      const drop = lines.length - MAX_KEPT;
      lines.splice(0, drop);
      buf.more = null;
      if (buf.key === state.active) {
        const log = $('log');
        if (buf.shownFrom < drop) scheduleRender('all');
        if (log.lastRendered !== undefined) log.lastRendered -= drop;
      }
      buf.shownFrom = Math.max(0, buf.shownFrom - drop);
    }
    if (live) countUnread(buf, line, live);
    if (buf.key === state.active) scheduleRender(index === lines.length - 1 ? 'append' : 'all');
    return true;
  }

  function mentions(text) {
    if (!state.me || !text) return false;
    const name = state.me.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    return new RegExp(`(^|[^\\p{L}\\p{N}_])${name}($|[^\\p{L}\\p{N}_])`, 'iu').test(text);
  }

  // `live`: true for a line said now, 'missed' for one replayed after an absence (unread, no notification).
  function countUnread(buf, line, live) {
    const said = ['message', 'action', 'private'].includes(line.kind);
    if (!said || fold(line.name) === fold(state.me)) return;
    if (buf.kind === 'room' && line.id && line.id <= buf.readId) return; // read already, here or elsewhere
    const mentioned = line.kind === 'private' || mentions(line.msg);
    const seen = buf.key === state.active && !document.hidden && atBottom();
    if (!seen) {
      buf.unread += 1;
      if (mentioned) buf.mention = true;
      if (buf.marker === null) buf.marker = buf.readId;
    } else if (line.id) {
      buf.readId = Math.max(buf.readId, line.id);
    }
    if (mentioned && document.hidden && live === true) notify(buf, line);
    scheduleChrome();
  }

  // --- the socket ---------------------------------------------------------------------------

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  function connect() {
    clearTimeout(state.retryTimer);
    state.wanted = true;
    setState('connecting', 'connecting…');
    const ws = new WebSocket(wsUrl());
    state.ws = ws;
    state.inbox = '';
    ws.onopen = () => {
      if (ws !== state.ws) return;
      firstJoin();
    };
    ws.onmessage = (event) => {
      if (ws !== state.ws) return;
      state.inbox += event.data;
      let end;
      while ((end = state.inbox.indexOf('\n')) >= 0) {
        const text = state.inbox.slice(0, end);
        state.inbox = state.inbox.slice(end + 1);
        if (!text.trim()) continue;
        let message;
        try {
          message = JSON.parse(text);
        } catch (e) {
          continue; // not ours to show: the server only sends JSON
        }
        handle(message);
      }
    };
    ws.onclose = () => {
      if (ws !== state.ws) return;
      state.ws = null;
      const was = state.connected;
      state.connected = false;
      for (const buf of state.buffers.values()) {
        buf.replay = 0;
        buf.older = 0;
        buf.fetching = false;
      }
      if (!state.wanted) return;
      if (!state.me) {
        showLogin('Cannot reach the server.');
        return;
      }
      if (was) state.retry = 0;
      // Soon at first (a restart takes seconds), then less and less often.
      const steps = [0.3, 1, 2, 3, 5, 5, 5, 10, 15, 30];
      const delay = steps[Math.min(state.retry, steps.length - 1)] * 1000;
      state.retry += 1;
      setState('offline', `offline — reconnecting in ${Math.round(delay / 1000) || 1} s`);
      renderOutbox();
      state.retryTimer = setTimeout(connect, delay);
    };
  }

  function send(message) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(message) + '\n');
      return true;
    }
    return false;
  }

  // A line a person typed, with a cid: sent now and kept until its echo comes, so that whether the
  // socket drops before it leaves or before its echo arrives, the reconnect sends it again, once.
  function say(message) {
    state.cids += 1;
    message.cid = `${state.cidPrefix}-${state.cids}`;
    state.unechoed.set(message.cid, { message, at: Date.now() });
    save(); // a reload or a closed tab still sends it, with the same cid
    renderOutbox();
    if (state.connected && send(message)) return;
    info(state.buffers.get(state.active), 'offline: this line will be sent when the connection is back');
  }

  // One of our lines came back: forget it by its cid, or (a server that keeps no cids, a resume's
  // history) the oldest line said of the same kind, place and text.
  function echoed(m) {
    if (!state.me || fold(m.name) !== fold(state.me)) return;
    if (m.cid) {
      if (state.unechoed.delete(m.cid)) {
        save();
        renderOutbox();
      }
      return;
    }
    for (const [cid, { message }] of state.unechoed) {
      const place = m.type === 'private' ? fold(message.to || '') === fold(m.to) : fold(message.room || '') === fold(m.room);
      if (message.type === m.type && message.msg === m.msg && place) {
        state.unechoed.delete(cid);
        save();
        renderOutbox();
        return;
      }
    }
  }

  function resendUnechoed() {
    const now = Date.now();
    for (const [cid, { message, at }] of state.unechoed) {
      if (now - at > RESEND_WITHIN) state.unechoed.delete(cid);
      else send(message);
    }
    renderOutbox();
  }

  // The shown buffer's lines said but not yet kept by the server, below its log until their echo.
  function renderOutbox() {
    const buf = state.buffers.get(state.active);
    const box = $('outbox');
    box.replaceChildren();
    if (buf) {
      for (const { message } of state.unechoed.values()) {
        const here = buf.kind === 'private'
          ? message.type === 'private' && fold(message.to) === fold(buf.name)
          : message.type !== 'private' && fold(message.room) === fold(buf.name);
        if (!here) continue;
        const row = el('li', 'unsent');
        if (message.type === 'action') row.append(el('span', 'star', '* '), el('span', 'nick', state.me), document.createTextNode(' '));
        else row.append(el('span', 'nick', state.me), document.createTextNode(': '));
        row.append(text(message.msg), el('span', 'unsent-mark', state.connected ? ' sending…' : ' not sent yet'));
        box.append(row);
      }
    }
    box.hidden = !box.childElementCount;
    if (buf && buf.following !== false) $('scroller').scrollTop = $('scroller').scrollHeight;
  }

  function firstJoin() {
    const saved = loadSaved();
    if (state.me) {
      const rooms = state.order.map((key) => state.buffers.get(key)).filter((b) => b.kind === 'room' && b.wanted);
      const active = state.buffers.get(state.active);
      if (active && active.kind === 'room' && active.wanted) state.firstRoom = active.name;
      else if (rooms.length) state.firstRoom = rooms[0].name;
    }
    const join = { type: 'join', name: state.me || $('name').value.trim(), room: state.firstRoom };
    if (state.password) {
      join.password = state.password;
    } else if (state.token) {
      join.token = state.token;
    }
    const first = state.buffers.get(keyOf('room', join.room));
    const since = first && first.lastId ? first.lastId : saved && saved.lastIds ? saved.lastIds[join.room] : 0;
    if (since) join.since = since;
    buffer('room', join.room).sinceSent = Boolean(since);
    if (state.privateSince) join.private_since = state.privateSince;
    send(join);
  }

  function rejoinOthers(accountRooms) {
    const saved = loadSaved();
    const rooms = new Set();
    for (const buf of state.buffers.values()) if (buf.kind === 'room' && buf.wanted) rooms.add(buf.name);
    // An account's rooms follow it from device to device: the ones it joined elsewhere too.
    for (const room of accountRooms || []) {
      if (![...rooms].some((known) => fold(known) === fold(room))) rooms.add(room);
    }
    if (state.fresh && saved && saved.name && fold(saved.name) === fold(state.me)) {
      for (const room of saved.rooms || []) rooms.add(room);
    }
    for (const room of [...rooms]) if (fold(room) === fold(state.firstRoom)) rooms.delete(room);
    for (const room of rooms) {
      const buf = state.buffers.get(keyOf('room', room));
      const since = buf && buf.lastId ? buf.lastId : saved && saved.lastIds ? saved.lastIds[room] : 0;
      const join = { type: 'join', room };
      if (since) join.since = since;
      buffer('room', room).sinceSent = Boolean(since);
      send(join);
    }
    state.fresh = false;
    resendUnechoed();
  }

  // --- what the server says -------------------------------------------------------------------

  function handle(m) {
    if (state.searchLeft > 0 && ['message', 'action', 'private'].includes(m.type)) {
      // A search's matches: a list to read, not news of any room.
      state.searchLeft -= 1;
      if (state.search) {
        state.search.lines.push(m);
        if (!state.searchLeft) renderSearch();
      }
      return undefined;
    }
    switch (m.type) {
      case 'welcome': return onWelcome(m);
      case 'message':
      case 'action': return onSaid(m);
      case 'topic': return onTopic(m);
      case 'moderation': return onModeration(m);
      case 'private': return onPrivate(m);
      case 'joined': return onJoined(m);
      case 'left': return onLeft(m);
      case 'renamed': return onRenamed(m);
      case 'users': return onUsers(m);
      case 'rooms': return onRooms(m);
      case 'results':
        state.searchLeft = m.count;
        if (state.search) {
          state.search.more = m.more;
          state.search.lines = [];
          if (!m.count) renderSearch();
        }
        return undefined;
      case 'history': return onHistory(m);
      case 'gap': return info(buffer('room', m.room), m.detail);
      case 'read': {
        const buf = state.buffers.get(keyOf('room', m.room));
        if (buf) {
          buf.toldRead = Math.max(buf.toldRead || 0, m.id);
          heardRead(buf, m.id);
        }
        return;
      }
      case 'reset': {
        const buf = buffer('room', m.room);
        buf.lines = [];
        buf.lastId = 0;
        buf.readId = 0;
        buf.shownFrom = 0;
        buf.epoch = m.epoch;
        info(buf, m.detail);
        return;
      }
      case 'token':
        state.token = m.token;
        state.account = true;
        save();
        return info(state.buffers.get(state.active), m.detail || 'registered: this name is now your account');
      case 'away': return m.room ? onAway(m) : info(buffer('private', m.name), `${m.name} is away: ${m.msg}`);
      case 'done': return info(state.buffers.get(state.active), m.detail);
      case 'notice': return info(state.buffers.get(state.active), m.detail);
      case 'ping': return send({ type: 'pong' });
      case 'pong': return undefined;
      case 'shutdown':
        return info(state.buffers.get(state.active), m.detail);
      case 'error': return onError(m);
      default: return undefined;
    }
  }

  function onWelcome(m) {
    const first = !state.connected;
    if (first) {
      state.me = m.name;
      if (m.token) state.token = m.token;
      state.account = Boolean(m.account);
      state.password = null;
      state.connected = true;
      state.retry = 0;
      $('me-name').textContent = m.name;
      showApp();
      setState('connected', 'connected');
    }
    const buf = buffer('room', m.room);
    buf.name = m.room;
    buf.joined = true;
    buf.wanted = true;
    buf.topic = m.topic || '';
    buf.users = new Map(m.users.map((name) => [fold(name), { name, role: (m.roles || {})[name] || '', away: '' }]));
    const epochChanged = m.epoch != null && buf.epoch != null && m.epoch !== buf.epoch;
    if (m.last_id < buf.lastId || epochChanged) {
      // The room started over (a new history, a lost Redis log): its old ids mean nothing now.
      buf.lines = [];
      buf.lastId = 0;
      buf.readId = 0;
      buf.marker = null;
      buf.shownFrom = 0;
      buf.more = null;
      info(buf, `${m.room}'s history started over`);
    }
    if (m.epoch != null) buf.epoch = m.epoch;
    if (m.read != null) {
      // An account's marker, whichever device set it: lines up to it are read here too.
      buf.readKnown = true;
      buf.toldRead = Math.max(buf.toldRead || 0, m.read);
      if (m.read > buf.readId) heardRead(buf, m.read);
    }
    buf.replay = m.history;
    buf.replayMissed = Boolean(buf.sinceSent);
    buf.sinceSent = false;
    if (!buf.replayMissed && m.history >= m.last_id) buf.more = 0; // the whole room came with the welcome
    const saved = loadSaved();
    if (state.fresh && buf.readId && m.last_id > buf.readId && buf.marker === null) buf.marker = buf.readId;
    buf.whoAt = 0; // the welcome has names and roles; away marks come with the next `who`
    buf.contextAsked = false;
    if (first) {
      if (state.registerWith) {
        send({ type: 'register', password: state.registerWith });
        state.registerWith = null;
      }
      for (const name of (saved && fold(saved.name || '') === fold(m.name) ? saved.conversations : []) || []) {
        buffer('private', name);
      }
      const want = saved && saved.active && state.buffers.has(saved.active) ? saved.active : null;
      activate(state.active || want || buf.key);
      rejoinOthers(m.rooms);
    } else if (!state.active) {
      activate(buf.key);
    }
    renderRooms();
    if (buf.key === state.active) {
      renderHeader();
      renderMembers();
      scheduleRender('all');
    }
    if (buf.key === state.active) freshen(buf);
    save();
  }

  function numbered(m, buf, kind, extra) {
    let live = true;
    if (buf.older > 0) {
      buf.older -= 1;
      live = false;
    } else if (buf.replay > 0) {
      buf.replay -= 1;
      // A resume's lines were missed; a join's are history, unread past the account's marker.
      live = buf.replayMissed || (buf.readKnown && m.id > buf.readId) ? 'missed' : false;
    }
    const line = { id: m.id, time: m.time, kind, name: m.name, msg: m.msg, ...extra };
    const added = addLine(buf, line, live);
    if (added) save();
    if (buf.jump && buf.jumpAfter !== undefined && buf.older === 0) {
      const id = buf.jump;
      buf.jump = null;
      buf.jumpAfter = undefined;
      if (buf.key === state.active) jumpTo(buf, id);
    }
  }

  function onSaid(m) {
    echoed(m);
    numbered(m, buffer('room', m.room), m.type);
  }

  function onTopic(m) {
    const buf = buffer('room', m.room);
    buf.topic = m.topic;
    numbered(m, buf, 'topic', { msg: m.topic });
    if (buf.key === state.active) renderHeader();
  }

  function onModeration(m) {
    const buf = buffer('room', m.room);
    numbered(m, buf, 'moderation', { action: m.action, by: m.by, reason: m.reason, until: m.until });
    if ((m.action === 'kick' || m.action === 'ban') && fold(m.name) === fold(state.me) && buf.joined) {
      buf.joined = false;
      buf.wanted = false;
      buf.users.clear();
      info(buf, `you are out of ${m.room}${m.action === 'ban' ? ' (banned)' : ''}; /join ${m.room} to come back`);
      renderRooms();
      if (buf.key === state.active) renderMembers();
      save();
    }
    const role = { op: 'op', deop: '', voice: 'voice', devoice: '' }[m.action];
    const user = buf.users.get(fold(m.name));
    if (role !== undefined && user && !['owner', 'admin'].includes(user.role)) {
      user.role = role;
      if (buf.key === state.active) renderMembers();
    }
  }

  function onPrivate(m) {
    echoed(m);
    const other = fold(m.name) === fold(state.me) ? m.to : m.name;
    const buf = buffer('private', other);
    if (m.id > state.privateSince) state.privateSince = m.id;
    const line = { id: m.id, time: m.time, kind: 'private', name: m.name, msg: m.msg };
    if (addLine(buf, line, true)) save();
  }

  function onJoined(m) {
    const buf = buffer('room', m.room);
    buf.users.set(fold(m.name), { name: m.name, role: '', away: '' });
    addLine(buf, { time: m.time, kind: 'joined', name: m.name }, false);
    if (buf.key === state.active) renderMembers();
  }

  function onLeft(m) {
    const buf = buffer('room', m.room);
    buf.users.delete(fold(m.name));
    if (fold(m.name) === fold(state.me)) {
      if (!buf.joined && m.reason !== 'part') return; // told already, by the moderation line
      buf.joined = false;
      if (m.reason === 'part') {
        buf.wanted = false;
        removeBuffer(buf.key);
        return;
      }
      buf.wanted = false;
      info(buf, `you left ${m.room} (${m.reason}); /join ${m.room} to come back`);
      save();
    } else {
      addLine(buf, { time: m.time, kind: 'left', name: m.name, reason: m.reason, msg: m.msg || '' }, false);
    }
    if (buf.key === state.active) renderMembers();
  }

  function onRenamed(m) {
    if (fold(m.old) === fold(state.me) || (state.me === m.old)) {
      state.me = m.new;
      $('me-name').textContent = m.new;
      save();
    }
    const rooms = m.room ? [buffer('room', m.room)] : [];
    for (const buf of rooms) {
      const user = buf.users.get(fold(m.old));
      buf.users.delete(fold(m.old));
      buf.users.set(fold(m.new), { name: m.new, role: user ? user.role : '', away: user ? user.away : '' });
      addLine(buf, { time: m.time, kind: 'renamed', name: m.old, to: m.new }, false);
      if (buf.key === state.active) renderMembers();
    }
    // A conversation follows its person to the new name (once, however many rooms say it).
    const talk = state.buffers.get(keyOf('private', m.old));
    if (talk && fold(m.old) !== fold(m.new) && !state.buffers.has(keyOf('private', m.new))) {
      state.buffers.delete(talk.key);
      const key = keyOf('private', m.new);
      state.order = state.order.map((k) => (k === talk.key ? key : k));
      if (state.active === talk.key) state.active = key;
      talk.key = key;
      talk.name = m.new;
      state.buffers.set(key, talk);
      addLine(talk, { time: m.time, kind: 'renamed', name: m.old, to: m.new }, false);
      renderRooms();
      renderHeader();
      save();
    }
  }

  function onUsers(m) {
    const buf = state.buffers.get(keyOf('room', m.room));
    if (!buf) return;
    buf.users = new Map(m.users.map((name) => [fold(name), {
      name, role: (m.roles || {})[name] || '', away: (m.away || {})[name] || '',
    }]));
    if (buf.key === state.active) renderMembers();
  }

  function onAway(m) {
    // A member of m.room went away (m.msg says why) or came back (""): its mark in the member list.
    const buf = state.buffers.get(keyOf('room', m.room));
    const user = buf && buf.users.get(fold(m.name));
    if (!user) return;
    user.away = m.msg;
    if (buf.key === state.active) renderMembers();
  }

  function onRooms(m) {
    const buf = state.buffers.get(state.active);
    info(buf, `${m.rooms.length} rooms:`);
    for (const room of m.rooms) {
      info(buf, `${room.room} (${room.users})${room.topic ? ' — ' + room.topic : ''}`);
    }
  }

  function onHistory(m) {
    const buf = buffer('room', m.room);
    buf.older = m.count;
    buf.more = m.more;
    buf.fetching = false;
    if (m.count === 0) scheduleRender('all');
    if (buf.jump && m.count) buf.jumpAfter = m.count; // the page's lines come next; then the jump lands
    else buf.jump = null; // nothing older is kept: the line is gone (retention)
  }

  function onError(m) {
    if (!state.connected) {
      // The first join was refused: back to the form, saying why.
      const sayWhy = {
        name_taken: 'Somebody connected has that name (or one that looks like it).',
        name_registered: 'That name is an account: give its password.',
        auth_failed: 'Wrong name or password (or the saved session ended): log in again.',
      };
      state.wanted = false;
      state.token = null;
      state.me = null;
      if (state.ws) state.ws.close();
      localStorage.removeItem(STORE_KEY);
      showLogin(sayWhy[m.code] || m.detail);
      return;
    }
    if (m.code === 'already_joined' && m.room && state.buffers.has(keyOf('room', m.room))) {
      return; // another device of the account put this one in the room first: nothing is wrong
    }
    if (m.code === 'search_unavailable' || (m.code === 'search_invalid' && state.search)) {
      showSearch(m.code === 'search_unavailable'
        ? 'This server cannot search: it keeps no history file, or shares its rooms with other servers.'
        : `Nothing to search for: ${m.detail}`);
      return;
    }
    if (m.code === 'session_replaced' || m.code === 'removed') {
      state.wanted = false;
      setState('offline', m.code === 'session_replaced' ? 'signed in elsewhere — click to reconnect' : 'disconnected');
    }
    const buf = (m.room && state.buffers.get(keyOf('room', m.room))) || state.buffers.get(state.active);
    info(buf, m.detail, 'error');
  }

  function info(buf, text, kind = 'info') {
    if (!buf) {
      if (!state.active) return;
      buf = state.buffers.get(state.active);
    }
    addLine(buf, { time: new Date().toISOString(), kind, msg: String(text) }, false);
  }

  // What an opened room asks the server for, at most now and then: every request is paced by the
  // rate limit like a line said, so switching rooms must not cost the next line its turn.
  function freshen(buf) {
    if (buf.kind !== 'room' || !buf.joined || !state.connected) return;
    if (!buf.whoAt || Date.now() - buf.whoAt > 60000) {
      buf.whoAt = Date.now();
      send({ type: 'who', room: buf.name }); // away marks, and roles changed meanwhile
    }
    // Context above what was missed (a resume): older lines, behind the "new since you left" marker.
    const numberedLines = buf.lines.filter((line) => line.id).length;
    if (!buf.contextAsked && numberedLines < 20 && buf.lastId > numberedLines && buf.more !== 0) {
      buf.contextAsked = true;
      fetchOlder(buf, 50 - numberedLines);
    }
  }

  function fetchOlder(buf, limit = PAGE) {
    if (!buf || buf.kind !== 'room' || buf.fetching || !state.connected || buf.more === 0) return;
    const first = buf.lines.find((line) => line.id);
    const before = first ? first.id : buf.lastId + 1;
    if (before <= 1) {
      buf.more = 0;
      return;
    }
    buf.fetching = true;
    send({ type: 'history', room: buf.name, before, limit });
  }

  // --- rendering --------------------------------------------------------------------------------

  let renderWanted = null;

  const RENDER_RANK = { append: 1, all: 2, 'all-bottom': 3 };

  function scheduleRender(kind) {
    const first = renderWanted === null;
    if (first || RENDER_RANK[kind] > RENDER_RANK[renderWanted]) renderWanted = kind;
    if (first) requestAnimationFrame(renderLog);
  }

  let chromeWanted = false;

  // The room list and the title, once per frame however many lines came.
  function scheduleChrome() {
    if (chromeWanted) return;
    chromeWanted = true;
    requestAnimationFrame(() => {
      chromeWanted = false;
      renderRooms();
      renderTitle();
    });
  }

  function atBottom() {
    const scroller = $('scroller');
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  }

  function dayOf(time) {
    const date = new Date(time);
    return isNaN(date) ? '' : date.toDateString();
  }

  function renderLog() {
    const kind = renderWanted;
    renderWanted = null;
    const buf = state.buffers.get(state.active);
    const log = $('log');
    const scroller = $('scroller');
    if (!buf) {
      log.replaceChildren();
      return;
    }
    if (buf.holdView) {
      buf.holdView = false;
      buf.following = false;
    } else if (kind === 'all-bottom' || log.bufferKey !== buf.key) {
      buf.following = true;
    }
    // Following: the reader is at the newest line, and stays there as lines come.
    const stick = buf.following !== false;
    if (kind === 'append' && log.lastRendered !== undefined && log.bufferKey === buf.key) {
      const fragment = document.createDocumentFragment();
      let day = log.lastDay;
      let i = log.lastRendered + 1;
      // Scrolled up, the reader keeps what is shown; the rest waits until they come back down.
      const room = stick ? Infinity : MAX_DOM + PAGE - log.childElementCount;
      for (; i < buf.lines.length && i - log.lastRendered <= room; i += 1) day = renderLine(fragment, buf, i, day);
      log.lastDay = day;
      log.lastRendered = i - 1;
      log.append(fragment);
      // Bounded DOM: the oldest rendered lines go when the reader is at the bottom.
      if (stick) {
        while (log.childElementCount > MAX_DOM) log.firstElementChild.remove();
        buf.shownFrom = Math.max(buf.shownFrom, buf.lines.length - MAX_DOM);
      }
    } else {
      if (stick || buf.shownFrom > buf.lines.length - 1) buf.shownFrom = Math.max(0, buf.lines.length - MAX_DOM);
      const fragment = document.createDocumentFragment();
      let day = '';
      const end = Math.min(buf.lines.length, buf.shownFrom + MAX_DOM);
      for (let i = buf.shownFrom; i < end; i += 1) day = renderLine(fragment, buf, i, day);
      // Scrolled back, the line at the top of the view stays where it is while lines come and go.
      const anchor = stick ? null : [...log.children].find((node) => node.dataset.id && node.offsetTop >= scroller.scrollTop);
      const offset = anchor ? anchor.offsetTop - scroller.scrollTop : 0;
      log.replaceChildren(fragment);
      log.lastRendered = end - 1;
      log.lastDay = day;
      log.bufferKey = buf.key;
      const again = anchor ? log.querySelector(`[data-id="${Number(anchor.dataset.id)}"]`) : null;
      if (again) scroller.scrollTop = again.offsetTop - offset;
    }
    const first = buf.lines.find((line) => line.id);
    const older = buf.shownFrom > 0 || (buf.more !== 0 && !(first && first.id === 1));
    $('older').hidden = !(buf.kind === 'room' && older);
    if (stick) scroller.scrollTop = scroller.scrollHeight;
    if (stick && !document.hidden) markRead(buf);
  }

  function renderLine(parent, buf, index, day) {
    const line = buf.lines[index];
    const lineDay = dayOf(line.time);
    if (lineDay && lineDay !== day) {
      const separator = el('div', 'day', new Date(line.time).toLocaleDateString(undefined,
        { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' }));
      separator.setAttribute('role', 'separator');
      parent.append(separator);
    }
    const previous = buf.lines[index - 1];
    if (buf.marker !== null && line.id && line.id > buf.marker && (!previous || !previous.id || previous.id <= buf.marker)
        && index > 0) {
      const marker = el('div', 'marker', 'new since you left');
      marker.setAttribute('role', 'separator');
      parent.append(marker);
    }
    parent.append(lineNode(line));
    return lineDay || day;
  }

  function lineNode(line) {
    const row = el('div', `line ${line.kind}`);
    if (line.id) row.dataset.id = line.id;
    const date = new Date(line.time);
    const time = el('time', 'time', isNaN(date) ? '' : date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }));
    if (!isNaN(date)) {
      time.dateTime = line.time;
      time.title = date.toLocaleString();
    }
    row.append(time, document.createTextNode(' '));
    const nick = (name) => el('span', 'nick', name);
    switch (line.kind) {
      case 'message':
      case 'private':
        row.append(nick(line.name), document.createTextNode(': '), text(line.msg));
        if (fold(line.name) !== fold(state.me) && mentions(line.msg)) row.classList.add('mention');
        break;
      case 'action':
        row.append(el('span', 'star', '* '), nick(line.name), document.createTextNode(' '), text(line.msg));
        break;
      case 'topic':
        row.append(text(line.msg ? `${line.name} set the topic: ${line.msg}` : `${line.name} cleared the topic`));
        break;
      case 'moderation': {
        const did = {
          kick: `kicked ${line.name}`, ban: `banned ${line.name}`, unban: `lifted the ban on ${line.name}`,
          mute: `muted ${line.name}`, unmute: `unmuted ${line.name}`, op: `made ${line.name} an operator`,
          deop: `took operator from ${line.name}`, voice: `gave ${line.name} a voice`,
          devoice: `took the voice of ${line.name}`, mode: `set the room's modes ${line.name}`,
        }[line.action] || `did ${line.action} to ${line.name}`;
        let said = `${line.by} ${did}`;
        if (line.reason) said += ` (${line.reason})`;
        if (line.until) said += ` until ${new Date(line.until).toLocaleString()}`;
        row.append(text(said));
        break;
      }
      case 'joined':
        row.append(text(`${line.name} joined`));
        break;
      case 'left':
        row.append(text(`${line.name} left (${line.reason})${line.msg ? ': ' + line.msg : ''}`));
        break;
      case 'renamed':
        row.append(text(`${line.name} is now ${line.to}`));
        break;
      default:
        row.append(text(line.msg));
    }
    return row;
  }

  // Text with its http(s) links made clickable; nothing else of it is markup.
  function text(value) {
    const span = el('span', 'text');
    const source = String(value);
    let last = 0;
    for (const match of source.matchAll(LINK)) {
      let url = match[0];
      const trailing = /[.,;:!?)\]}]+$/.exec(url);
      if (trailing) url = url.slice(0, -trailing[0].length);
      if (match.index > last) span.append(document.createTextNode(source.slice(last, match.index)));
      const link = el('a', null, url);
      link.href = url;
      link.rel = 'noopener noreferrer';
      link.target = '_blank';
      span.append(link);
      last = match.index + url.length;
    }
    if (last < source.length) span.append(document.createTextNode(source.slice(last)));
    return span;
  }

  function markRead(buf) {
    const newest = [...buf.lines].reverse().find((line) => line.id);
    if (newest && newest.id > buf.readId) buf.readId = newest.id;
    if (buf.unread || buf.mention) {
      buf.unread = 0;
      buf.mention = false;
      renderRooms();
      renderTitle();
    }
    if (state.account && buf.kind === 'room' && buf.readId > (buf.toldRead || 0)) tellRead();
    save();
  }

  // The account's other devices learn what was read here: at once, then (while lines keep coming)
  // at most every READ_EVERY ms, one `read` per room that moved, since each line to the server
  // spends the rate limit like a line said. What is still waiting goes when the page is hidden.
  function tellRead() {
    if (state.readTimer) return;
    const wait = (state.readSentAt || 0) + READ_EVERY - Date.now();
    if (wait <= 0) flushRead();
    else state.readTimer = setTimeout(flushRead, wait);
  }

  function flushRead() {
    clearTimeout(state.readTimer);
    state.readTimer = null;
    if (!state.connected || !state.account) return;
    for (const buf of state.buffers.values()) {
      if (buf.kind !== 'room' || !buf.joined || buf.readId <= (buf.toldRead || 0)) continue;
      if (send({ type: 'read', room: buf.name, id: buf.readId })) {
        buf.toldRead = buf.readId;
        state.readSentAt = Date.now();
      }
    }
  }

  // Another device of the account read `buf` up to `id` (or a welcome said so): what it read is not
  // unread here, and "new since you left" moves past it.
  function heardRead(buf, id) {
    if (id <= buf.readId) return;
    buf.readId = id;
    let unread = 0;
    let mention = false;
    for (const line of buf.lines) {
      if (!line.id || line.id <= id || !['message', 'action'].includes(line.kind) || fold(line.name) === fold(state.me)) continue;
      unread += 1;
      if (mentions(line.msg)) mention = true;
    }
    buf.unread = Math.min(buf.unread, unread);
    if (!buf.unread) buf.mention = false;
    else buf.mention = buf.mention && mention;
    if (buf.marker !== null) buf.marker = id;
    if (buf.key === state.active) scheduleRender('all');
    scheduleChrome();
    save();
  }

  function renderRooms() {
    const list = $('rooms');
    list.replaceChildren();
    let index = 0;
    let heading = null;
    if (state.order.length) list.append(el('li', 'heading', 'Rooms'));
    for (const key of state.order) {
      const buf = state.buffers.get(key);
      index += 1;
      if (buf.kind === 'private' && !heading) {
        heading = el('li', 'heading', 'Conversations');
        list.append(heading);
      }
      const item = el('li', 'room');
      const button = el('button', 'room-button');
      button.type = 'button';
      button.dataset.key = key;
      button.append(el('span', 'room-name', (buf.kind === 'private' ? '@' : '#') + buf.name));
      if (buf.unread) {
        const badge = el('span', buf.mention ? 'unread mention' : 'unread', String(buf.unread));
        badge.setAttribute('aria-label', `${buf.unread} unread${buf.mention ? ', mentioned' : ''}`);
        button.append(badge);
      } else if (buf.mention) {
        button.append(el('span', 'unread mention', '!'));
      }
      if (index <= 9) button.title = `Alt+${index}`;
      if (key === state.active) {
        item.classList.add('active');
        button.setAttribute('aria-current', 'page');
      }
      if (buf.kind === 'room' && !buf.joined) item.classList.add('parted');
      button.addEventListener('click', () => {
        activate(key);
        closePanels();
        $('message').focus();
      });
      item.append(button);
      list.append(item);
    }
  }

  function renderHeader() {
    const buf = state.buffers.get(state.active);
    $('room-title').textContent = buf ? (buf.kind === 'private' ? '@' : '#') + buf.name : '';
    $('topic').textContent = buf && buf.kind === 'room' ? buf.topic : buf ? 'private conversation' : '';
  }

  function renderMembers() {
    const buf = state.buffers.get(state.active);
    const list = $('member-list');
    list.replaceChildren();
    if (!buf || buf.kind !== 'room') {
      $('members').classList.add('empty');
      return;
    }
    $('members').classList.remove('empty');
    const users = [...buf.users.values()].sort((a, b) =>
      (ROLE_RANK[a.role] ?? 9) - (ROLE_RANK[b.role] ?? 9) || a.name.localeCompare(b.name));
    for (const user of users) {
      const item = el('li', 'member');
      if (user.role) {
        const badge = el('span', `role ${user.role}`, ROLE_MARK[user.role] || '');
        badge.title = user.role;
        item.append(badge);
      }
      const name = el('span', 'member-name', user.name);
      item.append(name);
      if (user.role) item.append(el('span', 'sr', ` (${user.role})`));
      if (user.away) {
        item.classList.add('away');
        const away = el('span', 'away-mark', ' (away)');
        item.title = `away: ${user.away}`;
        item.append(away);
      }
      item.addEventListener('click', () => {
        const box = $('message');
        box.value = `${user.name}: ${box.value}`;
        box.focus();
        closePanels();
      });
      list.append(item);
    }
    $('members').querySelector('h3').textContent = `Members (${users.length})`;
  }

  function renderTitle() {
    let unread = 0;
    for (const buf of state.buffers.values()) unread += buf.unread;
    document.title = unread ? `(${unread}) chat` : 'chat';
    const badge = $('menu-unread');
    badge.hidden = !unread;
    badge.textContent = String(unread);
  }

  function setState(kind, label) {
    const node = $('state');
    node.dataset.state = kind;
    node.textContent = label;
  }

  function activate(key) {
    const previous = state.buffers.get(state.active);
    if (previous && previous.key !== key) previous.marker = null;
    const buf = state.buffers.get(key);
    if (!buf) return;
    state.active = key;
    if (buf.marker === null && buf.unread) buf.marker = buf.readId;
    renderRooms();
    renderHeader();
    renderMembers();
    renderOutbox();
    scheduleRender('all-bottom');
    freshen(buf);
    save();
  }

  // --- search results: a panel above the log, each result a button that opens its place --------

  // The panel takes room from the log: a reader at the newest line stays there.
  function keepingBottom(change) {
    const bottom = atBottom();
    change();
    if (bottom) $('scroller').scrollTop = $('scroller').scrollHeight;
  }

  function showSearch(status) {
    keepingBottom(() => fillSearch(status));
  }

  function fillSearch(status) {
    const scope = state.search && state.search.room ? ` in #${state.search.room}` : ' everywhere';
    $('search-title').textContent = state.search ? `Search for “${state.search.text}”${scope}` : 'Search';
    $('search-status').textContent = status;
    $('search-results').replaceChildren();
    $('search').hidden = false;
  }

  function renderSearch() {
    keepingBottom(listResults);
  }

  function listResults() {
    const found = state.search;
    const count = found.lines.length;
    fillSearch(count ? `${count} line${count === 1 ? '' : 's'} found, newest first${found.more ? `; ${found.more} older not shown` : ''}`
      : 'No line found.');
    const list = $('search-results');
    for (const m of found.lines) {
      const item = el('li', 'result');
      const button = el('button', 'result-button');
      button.type = 'button';
      const date = new Date(m.time);
      const when = el('time', 'when', isNaN(date) ? '' : date.toLocaleString([], {
        year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
      }));
      if (!isNaN(date)) when.dateTime = m.time;
      const other = m.type === 'private' ? (fold(m.name) === fold(state.me) ? m.to : m.name) : null;
      const place = el('span', 'where', m.type === 'private' ? `@${other}` : `#${m.room}`);
      button.append(when, document.createTextNode(' '), place, document.createTextNode(m.type === 'action' ? ' * ' : ' '),
        el('span', 'nick', m.name), document.createTextNode(m.type === 'action' ? ' ' : ': '), el('span', 'text', m.msg));
      button.addEventListener('click', () => jumpTo(m.type === 'private' ? buffer('private', other) : buffer('room', m.room), m.id));
      item.append(button);
      list.append(item);
    }
  }

  function closeSearch() {
    keepingBottom(() => {
      $('search').hidden = true;
    });
    state.search = null;
  }

  // Open a result's place with the line in view. A line older than those kept is fetched first,
  // every line between it and them too (scrolling back goes on from the oldest line kept).
  function jumpTo(buf, id) {
    if (state.active !== buf.key) activate(buf.key);
    const index = buf.lines.findIndex((line) => line.id === id);
    if (index < 0) {
      const first = buf.lines.find((line) => line.id);
      const before = first ? first.id : buf.lastId + 1;
      if (buf.kind !== 'room' || !state.connected || buf.fetching || id >= before) return;
      if (before - id > JUMP_FARTHEST) {
        info(buf, `that line is ${before - id} lines back: scroll up to reach it`);
        return;
      }
      buf.jump = id;
      buf.fetching = true;
      send({ type: 'history', room: buf.name, before, limit: Math.min(JUMP_PAGE, before - id + 20) });
      return;
    }
    buf.jump = null;
    buf.shownFrom = Math.max(0, index - 20);
    buf.holdView = true; // this render shows the found line, not the newest
    scheduleRender('all');
    requestAnimationFrame(() => requestAnimationFrame(() => {
      const node = $('log').querySelector(`[data-id="${id}"]`);
      if (!node) return;
      node.classList.add('found');
      node.scrollIntoView({ block: 'center' });
    }));
  }

  $('search-close').addEventListener('click', closeSearch);

  function notify(buf, line) {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    const where = buf.kind === 'private' ? `${line.name} (private)` : `${line.name} in #${buf.name}`;
    const note = new Notification(where, { body: String(line.msg).slice(0, 200), tag: buf.key });
    note.onclick = () => {
      window.focus();
      activate(buf.key);
    };
  }

  // --- login and logout -------------------------------------------------------------------------

  function showLogin(error) {
    $('app').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = error || '';
    $('join').disabled = false;
    $('name').focus();
  }

  function showApp() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('message').focus();
  }

  function logout() {
    state.wanted = false;
    send({ type: 'leave' });
    if (state.ws) state.ws.close();
    localStorage.removeItem(STORE_KEY);
    location.reload();
  }

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('name').value.trim();
    const password = $('password').value;
    if (!name) return;
    const register = $('register').checked;
    if (register && password.length < 8) {
      $('login-error').textContent = 'A password needs at least 8 characters.';
      return;
    }
    state.me = null;
    state.token = null;
    state.password = register ? null : password || null;
    state.registerWith = register ? password : null;
    state.firstRoom = $('first-room').value.trim() || 'lobby';
    $('password').value = '';
    $('join').disabled = true;
    $('login-error').textContent = '';
    connect();
  });

  // --- the message box: commands, sending, completion ----------------------------------------

  function runCommand(text) {
    const buf = state.buffers.get(state.active);
    const room = buf && buf.kind === 'room' ? buf.name : null;
    const [command, ...rest] = text.split(' ');
    const args = rest.join(' ').trim();
    const first = args.split(/\s+/)[0] || '';
    const after = args.slice(first.length).trim();
    const needRoom = () => {
      if (!room) info(buf, `${command} works in a room`, 'error');
      return room;
    };
    switch (command.toLowerCase()) {
      case '/join': {
        const name = first.replace(/^#/, '');
        if (!name) return info(buf, 'usage: /join ROOM', 'error');
        const existing = state.buffers.get(keyOf('room', name));
        if (existing && existing.joined) return activate(existing.key);
        buffer('room', name).wanted = true;
        activate(keyOf('room', name));
        // Offline, the room is joined with the others when the connection is back.
        return state.connected ? send({ type: 'join', room: name }) : undefined;
      }
      case '/part':
      case '/close':
        if (buf && buf.kind === 'private' && !first) return removeBuffer(buf.key);
        if (!(first || needRoom())) return undefined;
        return send({ type: 'part', room: first.replace(/^#/, '') || room });
      case '/msg':
      case '/query': {
        if (!first) return info(buf, `usage: ${command} NAME [TEXT]`, 'error');
        const talk = buffer('private', first);
        activate(talk.key);
        if (after) say({ type: 'private', to: first, msg: after });
        return undefined;
      }
      case '/me':
        if (!args) return info(buf, 'usage: /me ACTION', 'error');
        if (buf && buf.kind === 'private') return say({ type: 'private', to: buf.name, msg: `* ${state.me} ${args}` });
        return needRoom() && say({ type: 'action', room, msg: args });
      case '/topic':
        return needRoom() && send({ type: 'topic', room, topic: args });
      case '/nick':
        if (!first) return info(buf, 'usage: /nick NAME', 'error');
        return send({ type: 'nick', name: first });
      case '/kick':
        if (!first) return info(buf, 'usage: /kick NAME [REASON]', 'error');
        return needRoom() && send({ type: 'kick', room, name: first, reason: after });
      case '/ban':
      case '/mute': {
        if (!first) return info(buf, `usage: ${command} NAME [SECONDS] [REASON]`, 'error');
        const seconds = /^\d+$/.test(after.split(' ')[0]) ? Number(after.split(' ')[0]) : null;
        const reason = seconds === null ? after : after.split(' ').slice(1).join(' ');
        return needRoom() && send({ type: command.slice(1).toLowerCase(), room, name: first, duration: seconds, reason });
      }
      case '/unban':
      case '/unmute':
      case '/op':
      case '/deop':
      case '/voice':
      case '/devoice':
        if (!first) return info(buf, `usage: ${command} NAME`, 'error');
        return needRoom() && send({ type: command.slice(1).toLowerCase(), room, name: first });
      case '/away':
        return send(args ? { type: 'away', msg: args } : { type: 'away' });
      case '/back':
        return send({ type: 'away' });
      case '/who':
        return needRoom() && send({ type: 'who', room: first.replace(/^#/, '') || room });
      case '/list':
        return send({ type: 'rooms' });
      case '/search': {
        // /search TEXT: this room (or everywhere, from a conversation); /search -all TEXT: everywhere.
        const everywhere = first === '-all' || !room;
        const words = first === '-all' ? after : args;
        if (!words) return info(buf, 'usage: /search [-all] TEXT', 'error');
        if (!state.connected) return info(buf, 'offline: search again when the connection is back', 'error');
        state.search = { text: words, room: everywhere ? null : room, more: 0, lines: [] };
        showSearch('searching…');
        const asked = { type: 'search', text: words, limit: 50 };
        if (!everywhere) asked.room = room;
        return send(asked);
      }
      case '/logout':
        return logout();
      case '/help':
        return info(buf, `commands: ${COMMANDS.join(' ')}; // at the start sends a line starting with /`);
      default:
        return info(buf, `unknown command ${command} (try /help)`, 'error');
    }
  }

  function submit() {
    const box = $('message');
    const value = box.value;
    if (!value.trim()) return;
    box.value = '';
    resizeBox();
    const buf = state.buffers.get(state.active);
    if (value.startsWith('/') && !value.startsWith('//')) {
      runCommand(value.trim());
      return;
    }
    const msg = value.startsWith('//') ? value.slice(1) : value;
    if (!buf) return;
    if (buf.kind === 'private') say({ type: 'private', to: buf.name, msg });
    else say({ type: 'message', room: buf.name, msg });
    scheduleRender('all-bottom');
  }

  const completion = { words: null, index: 0, start: 0, end: 0 };

  function complete(box) {
    if (completion.words === null) {
      const upto = box.value.slice(0, box.selectionStart);
      const start = upto.search(/\S*$/);
      const prefix = fold(upto.slice(start));
      if (!prefix) return false;
      const buf = state.buffers.get(state.active);
      let words;
      if (start === 0 && prefix.startsWith('/')) {
        words = COMMANDS.filter((command) => command.startsWith(prefix)).map((command) => command + ' ');
      } else {
        const names = buf && buf.kind === 'room' ? [...buf.users.values()].map((user) => user.name) : buf ? [buf.name] : [];
        const rooms = [...state.buffers.values()].filter((b) => b.kind === 'room').map((b) => '#' + b.name);
        words = [...names, ...rooms].filter((name) => fold(name).startsWith(prefix) || fold(name).startsWith('#' + prefix) && prefix.startsWith('#'))
          .sort((a, b) => a.localeCompare(b))
          .map((name) => (start === 0 && !name.startsWith('#') ? `${name}: ` : `${name} `));
      }
      if (!words.length) return false;
      completion.words = words;
      completion.index = 0;
      completion.start = start;
      completion.end = box.selectionStart;
    } else {
      completion.index = (completion.index + 1) % completion.words.length;
    }
    const word = completion.words[completion.index];
    box.value = box.value.slice(0, completion.start) + word + box.value.slice(completion.end);
    completion.end = completion.start + word.length;
    box.setSelectionRange(completion.end, completion.end);
    return true;
  }

  function resizeBox() {
    const box = $('message');
    box.style.height = 'auto';
    box.style.height = `${Math.min(box.scrollHeight, 160)}px`;
  }

  $('message').addEventListener('keydown', (event) => {
    // Tab completes a name; with nothing to complete it moves the focus on, as everywhere.
    if (event.key === 'Tab' && !event.shiftKey && !event.altKey && !event.ctrlKey && complete(event.target)) {
      event.preventDefault();
      return;
    }
    completion.words = null;
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  $('message').addEventListener('input', resizeBox);
  $('send').addEventListener('submit', (event) => {
    event.preventDefault();
    submit();
  });

  // --- the rest of the page: switching, panels, notifications, scrollback -------------------

  function switchBy(offset) {
    const index = state.order.indexOf(state.active);
    if (!state.order.length) return;
    activate(state.order[(index + offset + state.order.length) % state.order.length]);
  }

  document.addEventListener('keydown', (event) => {
    if ($('app').hidden) return;
    if (event.altKey && /^Digit[1-9]$/.test(event.code)) {
      const key = state.order[Number(event.code.slice(5)) - 1];
      if (key) {
        event.preventDefault();
        activate(key);
        $('message').focus();
      }
    } else if (event.altKey && (event.key === 'ArrowUp' || event.key === 'ArrowDown')) {
      event.preventDefault();
      switchBy(event.key === 'ArrowUp' ? -1 : 1);
    } else if ((event.ctrlKey || event.metaKey) && fold(event.key) === 'k') {
      event.preventDefault();
      openPanel('sidebar');
      $('new-room').focus();
    } else if (event.key === 'Escape') {
      if (!$('search').hidden) closeSearch();
      closePanels();
      $('message').focus();
    }
  });

  // Ctrl-K's box: a room or conversation you have is switched to, another room joined (@name: a conversation).
  $('join-room').addEventListener('submit', (event) => {
    event.preventDefault();
    const wanted = $('new-room').value.trim();
    $('new-room').value = '';
    closePanels();
    $('message').focus();
    if (!wanted) return;
    if (wanted.startsWith('@')) {
      activate(buffer('private', wanted.slice(1)).key);
      return;
    }
    const name = wanted.replace(/^#/, '');
    const matches = state.order.filter((key) => fold(state.buffers.get(key).name).startsWith(fold(name)));
    if (state.buffers.has(keyOf('room', name))) activate(keyOf('room', name));
    else if (state.buffers.has(keyOf('private', name))) activate(keyOf('private', name));
    else if (matches.length === 1 && name.length < state.buffers.get(matches[0]).name.length) activate(matches[0]);
    else runCommand(`/join ${name}`);
  });

  function openPanel(id) {
    $(id).classList.add('open');
    const toggle = id === 'sidebar' ? $('menu') : $('members-toggle');
    toggle.setAttribute('aria-expanded', 'true');
  }

  function closePanels() {
    for (const id of ['sidebar', 'members']) $(id).classList.remove('open');
    $('menu').setAttribute('aria-expanded', 'false');
    $('members-toggle').setAttribute('aria-expanded', 'false');
  }

  $('menu').addEventListener('click', () => {
    if ($('sidebar').classList.contains('open')) closePanels();
    else openPanel('sidebar');
  });
  $('members-toggle').addEventListener('click', () => {
    if ($('members').classList.contains('open')) closePanels();
    else openPanel('members');
  });
  $('logout').addEventListener('click', logout);
  $('notify').addEventListener('click', () => {
    if (!('Notification' in window)) return;
    Notification.requestPermission().then((permission) => {
      $('notify').textContent = permission === 'granted' ? 'Notifications on' : 'Notifications off';
    });
  });
  $('state').addEventListener('click', () => {
    if (!state.ws && state.me) {
      state.retry = 0;
      connect();
    }
  });
  $('older').addEventListener('click', () => showOlder());

  // Back in time: lines kept here first, then pages fetched from the server; the window of lines
  // in the page moves, so however far back one scrolls, the page holds at most MAX_DOM of them.
  function showOlder() {
    const buf = state.buffers.get(state.active);
    if (!buf) return;
    if (buf.shownFrom > 0) {
      buf.shownFrom = Math.max(0, buf.shownFrom - PAGE);
      buf.following = false;
      scheduleRender('all');
    } else {
      fetchOlder(buf);
    }
  }

  $('scroller').addEventListener('scroll', () => {
    const scroller = $('scroller');
    const buf = state.buffers.get(state.active);
    const log = $('log');
    if (!buf || log.bufferKey !== buf.key) return;
    if (scroller.scrollTop < 40 && scroller.scrollHeight > scroller.clientHeight) showOlder();
    const bottom = atBottom();
    if (bottom && buf.following === false && log.lastRendered < buf.lines.length - 1) {
      // Forward again: the window moves down a page; at the newest line it follows once more.
      buf.shownFrom = Math.min(Math.max(0, buf.lines.length - MAX_DOM), buf.shownFrom + PAGE);
      buf.following = buf.shownFrom + MAX_DOM >= buf.lines.length;
      scheduleRender(buf.following ? 'all-bottom' : 'all');
    } else {
      buf.following = bottom;
    }
    if (buf.following && !document.hidden) markRead(buf);
  }, { passive: true });

  document.addEventListener('visibilitychange', () => {
    const buf = state.buffers.get(state.active);
    if (!document.hidden && buf && atBottom()) markRead(buf);
    if (document.hidden) flushRead();
  });
  window.addEventListener('pagehide', flushRead);
  window.addEventListener('online', () => {
    if (state.me && !state.ws && state.wanted) {
      state.retry = 0;
      connect();
    }
  });

  // --- start: come back with the saved session, or ask who you are ---------------------------

  const saved = loadSaved();
  if (saved && saved.name && saved.token) {
    state.me = saved.name;
    state.token = saved.token;
    state.privateSince = saved.privateSince || 0;
    state.firstRoom = (saved.rooms && saved.rooms[0]) || 'lobby';
    if (saved.active && saved.active.startsWith('@')) state.firstRoom = (saved.rooms && saved.rooms[0]) || 'lobby';
    else if (saved.active && (saved.rooms || []).map(fold).includes(saved.active)) {
      state.firstRoom = saved.rooms.find((room) => fold(room) === saved.active);
    }
    $('name').value = saved.name;
    $('me-name').textContent = saved.name;
    for (const room of saved.rooms || []) {
      const buf = buffer('room', room);
      buf.wanted = true;
      buf.lastId = (saved.lastIds || {})[room] || 0; // the resume's `since`
      buf.readId = (saved.readIds || {})[room] || 0; // where "new since you left" goes
    }
    for (const name of saved.conversations || []) buffer('private', name);
    // Lines said whose echo never came keep their cids; this page's own lines get new ones.
    for (const kept of saved.unechoed || []) {
      if (kept && kept.message && typeof kept.message.cid === 'string') state.unechoed.set(kept.message.cid, kept);
    }
    if (saved.active && state.buffers.has(saved.active)) activate(saved.active);
    showApp();
    connect();
  } else {
    showLogin('');
  }
})();
