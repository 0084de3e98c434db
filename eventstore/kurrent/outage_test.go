package kurrent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	"github.com/smsbatch/smsbatch/eventstore"
)

// serveGRPC runs a gRPC server with no services on addr ("" for any port): the
// client takes it for a server too old to list its features, connects, and
// has every call answered Unimplemented. Enough to see the client's
// connection handling without a KurrentDB server.
func serveGRPC(t *testing.T, addr string) (string, func()) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var l net.Listener
	var err error
	for range 50 { // the port may take a moment to free up
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go func() { _ = srv.Serve(l) }()
	return l.Addr().String(), srv.Stop
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// The library's client gives up for good when it cannot find the server for
// about a second; the store must not: while the server is away it answers
// ErrUnavailable (never ErrClosed, which stops every follower for good), and
// once the server is back it works again, without a restart.
func TestTheStoreOutlivesAServerOutage(t *testing.T) {
	addr, stop := serveGRPC(t, "")
	s, err := Open("esdb://"+addr+"?tls=false", Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendOne := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := s.Append(ctx, "batch-x", eventstore.Any(), []eventstore.EventData{{ID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}})
		return err
	}
	reached := func(err error) bool {
		return err != nil && !errors.Is(err, eventstore.ErrClosed) && !errors.Is(err, eventstore.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded)
	}
	// Up: the server without services answers Unimplemented, which is an answer.
	if err := appendOne(); !reached(err) {
		t.Fatalf("with the server up: %v", err)
	}
	stop()
	for i := range 3 {
		if err := appendOne(); errors.Is(err, eventstore.ErrClosed) || err == nil {
			t.Fatalf("server down, append %d: %v, want ErrUnavailable", i, err)
		}
	}
	_, stop = serveGRPC(t, addr)
	defer stop()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := appendOne()
		if reached(err) {
			break
		}
		if errors.Is(err, eventstore.ErrClosed) || time.Now().After(deadline) {
			t.Fatalf("server back: %v; the store never reached it again", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Calls made while the server cannot be found return by their contexts, and
// closing the store then does not crash the process.
func TestCallsDuringAnOutageReturnByTheirContext(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there
	s, err := Open("esdb://"+addr+"?tls=false", Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := s.ReadStream(ctx, "batch-x", 0, 10)
			done <- err
		}()
	}
	deadline := time.After(6 * time.Second)
	for i := range 4 {
		select {
		case err := <-done:
			if err == nil || errors.Is(err, eventstore.ErrClosed) {
				t.Errorf("a read with the server away: %v", err)
			}
		case <-deadline:
			t.Fatalf("%d of 4 concurrent reads still blocked 3 s after their context's deadline", 4-i)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadStream(context.Background(), "batch-x", 0, 10); !errors.Is(err, eventstore.ErrClosed) {
		t.Fatalf("a read after Close: %v, want ErrClosed", err)
	}
}

// Calls made during an outage return by their contexts; the goroutines the
// wrapper started for them must not stay behind for the life of the process
// (each holding its call's data: an append's events), piling up with the
// length of the outage.
func TestAnOutageLeavesNoGoroutinesBehind(t *testing.T) {
	addr, stop := serveGRPC(t, "")
	s, err := Open("esdb://"+addr+"?tls=false", Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	read := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := s.ReadStream(ctx, "batch-x", 0, 10)
		return err
	}
	reached := func(err error) bool {
		return err == nil || (!errors.Is(err, eventstore.ErrClosed) && !errors.Is(err, eventstore.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded))
	}
	if err := read(5 * time.Second); !reached(err) {
		t.Fatalf("server up: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	before := runtime.NumGoroutine()

	stop()
	// Four components keep trying through a 5 s outage, as followers,
	// the processor and API requests do.
	var wg sync.WaitGroup
	outage := time.Now().Add(5 * time.Second)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(outage) {
				_ = read(300 * time.Millisecond)
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	_, stop = serveGRPC(t, addr)
	defer stop()
	for deadline := time.Now().Add(15 * time.Second); ; {
		if reached(read(2 * time.Second)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the store never reached the server again")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	after := runtime.NumGoroutine()
	if after > before+10 {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		stuck := strings.Count(string(buf[:n]), "getConnectionHandle")
		t.Fatalf("%d goroutines before a 5 s outage, %d once the server is back and answering (%d blocked for good in the library's getConnectionHandle)", before, after, stuck)
	}
}
