// Live updates: a WebSocket feed when the server has one, polling otherwise.
//
// follow opens the socket at path with a fresh ticket (POST /api/ws/ticket) and
// hands each JSON message to onMessage. While the socket is not open, for
// whatever reason (no such endpoint yet, a proxy refusing upgrades, the server
// restarting), poll() is called every pollMs so the page keeps moving. A closed
// socket is reopened with backoff from the last position seen (&after=), or
// without one after three tries in a row closed before they opened.

import { api } from "./api.js";

export function follow({ path, onMessage, poll, pollMs = 1000, onMode = () => {} }) {
  let stopped = false;
  let socket = null;
  let after = "";
  let failedOpens = 0; // sockets in a row that closed before they opened
  let delay = 1000;
  let retryTimer = 0;
  let pollTimer = 0;

  const startPolling = () => {
    if (pollTimer || stopped) return;
    onMode("poll");
    const tick = async () => {
      try {
        await poll();
      } catch {
        // A failed poll is retried on the next tick.
      }
      if (!stopped && pollTimer) pollTimer = setTimeout(tick, pollMs);
    };
    pollTimer = setTimeout(tick, 0);
  };
  const stopPolling = () => {
    clearTimeout(pollTimer);
    pollTimer = 0;
  };
  const retry = () => {
    if (stopped) return;
    startPolling();
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
    delay = Math.min(delay * 2, 30000);
  };

  async function connect() {
    if (stopped) return;
    let ticket;
    try {
      ticket = await api.ticket();
    } catch {
      retry();
      return;
    }
    if (stopped || !ticket || !ticket.ticket) {
      if (!stopped) retry();
      return;
    }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams({ ticket: ticket.ticket });
    if (after) q.set("after", after);
    let opened = false;
    try {
      socket = new WebSocket(`${proto}//${location.host}${path}?${q}`);
    } catch {
      retry();
      return;
    }
    socket.onopen = () => {
      opened = true;
      delay = 1000;
      stopPolling();
      onMode("live");
      // Catch up on anything that happened before the socket opened.
      poll().catch(() => {});
    };
    socket.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.position) after = msg.position;
      onMessage(msg);
    };
    socket.onclose = () => {
      socket = null;
      if (stopped) return;
      if (opened) {
        delay = 1000;
        failedOpens = 0;
      } else if (++failedOpens >= 3) {
        // Closed before it opened, again and again: the server may be
        // refusing the position (409, too much to replay), which a browser
        // cannot tell from a network error or a restart. Reconnect without
        // it; poll() on open catches up.
        after = "";
      }
      retry();
    };
  }

  startPolling();
  connect();
  return () => {
    stopped = true;
    stopPolling();
    clearTimeout(retryTimer);
    if (socket) socket.close();
  };
}
