package api

import (
	"context"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"github.com/smsbatch/smsbatch/domain"
	"github.com/smsbatch/smsbatch/live"
)

// upgrader accepts WebSocket connections from any origin: callers authenticate
// with an API key or a ticket obtained with one, never with a cookie, so a page
// of another site cannot connect on a user's behalf.
var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 4096,
	CheckOrigin:     func(*http.Request) bool { return true },
	Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
		writeJSON(w, status, errorBody{Error: errorPayload{Code: domain.EMALFORMED, Message: "WebSocket handshake failed: " + reason.Error()}})
	},
}

// maxClientMessage bounds what a client may send; clients have nothing to say
// but pongs and a close.
const maxClientMessage = 4096

type ticketAnswer struct {
	Ticket    string    `json:"ticket"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// issueTicket answers POST /api/ws/ticket: a browser cannot set headers on a
// WebSocket, so it trades its key for a short-lived single-use ticket and passes
// that in the URL, where the key itself must never appear.
func (s *server) issueTicket(w http.ResponseWriter, r *http.Request) {
	p, _ := PrincipalFrom(r.Context())
	t, expires, err := s.tickets.issue(p)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, ticketAnswer{Ticket: t, ExpiresAt: expires})
}

// authenticateLive admits a request with a valid ticket in ?ticket=, or else a
// known bearer key as every other endpoint does.
func (s *server) authenticateLive(next http.Handler) http.Handler {
	bearer := s.authenticate(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := r.URL.Query().Get("ticket")
		if t == "" {
			bearer.ServeHTTP(w, r)
			return
		}
		p, ok, err := s.tickets.redeem(r.Context(), t)
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		if !ok {
			writeError(w, r, s.log, domain.Errorf(domain.EUNAUTHORIZED, "invalid, used or expired ticket: get a new one from POST /api/ws/ticket"))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// liveBatch answers GET /api/batch/{id}/ws: one batch's changes.
func (s *server) liveBatch(w http.ResponseWriter, r *http.Request) {
	id, err := batchID(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	s.live(w, r, id)
}

// liveAll answers GET /api/ws: the changes of every batch of the caller's tenant.
func (s *server) liveAll(w http.ResponseWriter, r *http.Request) { s.live(w, r, "") }

func (s *server) live(w http.ResponseWriter, r *http.Request, batchID string) {
	p, _ := PrincipalFrom(r.Context())
	sub := live.Subscription{Tenant: p.Tenant, BatchID: batchID}
	if q := r.URL.Query(); q.Has("after") {
		pos, err := live.ParsePosition(q.Get("after"))
		if err != nil {
			writeError(w, r, s.log, &domain.Error{Code: domain.EMALFORMED, Message: "invalid query parameter",
				Details: []domain.FieldProblem{{Field: "after", Problem: err.Error()}}})
			return
		}
		sub.After = &pos
	}
	// Subscribed before the upgrade, so that an unknown batch is a 404 answer
	// rather than a closed socket, and no change is missed in between.
	c, err := s.cfg.Live.Subscribe(r.Context(), sub)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.cfg.Live.Unsubscribe(c) // the upgrader has answered
		return
	}
	s.serve(conn, c)
}

// closeCodes says to a client why the hub dropped it.
var closeCodes = map[live.Drop]struct {
	code   int
	reason string
}{
	live.DropTooSlow:  {websocket.ClosePolicyViolation, "too slow: buffer full"},
	live.DropShutdown: {websocket.CloseGoingAway, "server shutting down"},
}

// serve writes c's messages to conn until either side goes away. A separate
// goroutine reads, which is what makes pongs and the client's close arrive.
func (s *server) serve(conn *websocket.Conn, c *live.Client) {
	ws := s.cfg.WebSocket
	defer conn.Close()
	defer s.cfg.Live.Unsubscribe(c)

	conn.SetReadLimit(maxClientMessage)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		_ = conn.SetReadDeadline(time.Now().Add(ws.PongWait))
		conn.SetPongHandler(func(string) error {
			return conn.SetReadDeadline(time.Now().Add(ws.PongWait))
		})
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()

	write := func(data []byte) error {
		_ = conn.SetWriteDeadline(time.Now().Add(ws.WriteWait))
		return conn.WriteMessage(websocket.TextMessage, data)
	}
	closeWith := func() {
		why := closeCodes[c.Why()]
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(why.code, why.reason), time.Now().Add(ws.WriteWait))
	}
	for _, m := range c.Initial() {
		if write(m) != nil {
			return
		}
	}
	ping := time.NewTicker(ws.PingInterval)
	defer ping.Stop()
	for {
		// Once dropped, queued messages are not worth sending: say why and go.
		select {
		case <-c.Gone():
			closeWith()
			return
		default:
		}
		select {
		case <-c.Gone():
			closeWith()
			return
		case <-readerDone:
			return
		case data := <-c.Messages():
			if write(data) != nil {
				return
			}
		case <-ping.C:
			if conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(ws.WriteWait)) != nil {
				return
			}
		}
	}
}
