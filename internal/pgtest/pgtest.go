// Package pgtest gives tests a real PostgreSQL: the server at TEST_DATABASE_URL
// when it is set, otherwise a throwaway cluster started from the local initdb and
// pg_ctl in a temporary directory and removed when the tests end. Each test gets
// a fresh database of its own. With SMSBATCH_REQUIRE_POSTGRES=1 (as CI sets it) a
// test that would be skipped for want of PostgreSQL fails instead.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	once     sync.Once
	baseURL  string
	setupErr error
	cluster  *Cluster
)

// Main runs the tests and stops the throwaway cluster, if one was started.
// Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if cluster != nil {
		cluster.Stop()
	}
	return code
}

// ServerURL returns the URL of a server the test may create databases on.
func ServerURL(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
			baseURL = u
			return
		}
		cluster, setupErr = StartCluster()
		if setupErr == nil {
			baseURL = cluster.URL("postgres")
		}
	})
	if setupErr != nil {
		if os.Getenv("SMSBATCH_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("PostgreSQL required but not available: %v", setupErr)
		}
		t.Skipf("no PostgreSQL: set TEST_DATABASE_URL or install initdb/pg_ctl (%v)", setupErr)
	}
	return baseURL
}

// Database creates a fresh database for the test and returns its URL; it is
// dropped when the test ends.
func Database(t testing.TB) string {
	t.Helper()
	server := ServerURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("connect to test PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	buf := make([]byte, 6)
	rand.Read(buf)
	name := "smsbatch_test_" + hex.EncodeToString(buf)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, server)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Cluster is a throwaway PostgreSQL cluster.
type Cluster struct {
	Dir  string
	Port int
	bin  string
	// asUser runs the server as this user when the tests run as root, which
	// initdb refuses.
	asUser string
}

// StartCluster initialises and starts a cluster in a temporary directory.
func StartCluster() (*Cluster, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "smsbatch-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		c.asUser = "postgres"
		u, err := user.Lookup(c.asUser)
		if err != nil {
			return nil, fmt.Errorf("running as root and no postgres user to run the cluster: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	data := filepath.Join(dir, "data")
	if out, err := c.run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	return c, nil
}

// Start starts (or restarts after Stop) the cluster and waits for it to accept connections.
func (c *Cluster) Start() error {
	data := filepath.Join(c.Dir, "data")
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", c.Port, c.Dir)
	if out, err := c.run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(c.Dir, "log"), "-w", "start"); err != nil {
		return fmt.Errorf("pg_ctl start: %v: %s", err, out)
	}
	return nil
}

// Restart restarts the server, dropping every connection.
func (c *Cluster) Restart() error {
	data := filepath.Join(c.Dir, "data")
	// -l keeps the server's output out of our pipe: without it the new server
	// inherits the pipe and reading the command's output never ends.
	if out, err := c.run("pg_ctl", "-D", data, "-m", "fast", "-l", filepath.Join(c.Dir, "log"), "-w", "restart"); err != nil {
		return fmt.Errorf("pg_ctl restart: %v: %s", err, out)
	}
	return nil
}

// Stop stops the cluster and removes its directory.
func (c *Cluster) Stop() {
	c.run("pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-m", "immediate", "-w", "stop")
	os.RemoveAll(c.Dir)
}

// URL is the connection URL of database db.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(c.bin, name)
	var cmd *exec.Cmd
	if c.asUser != "" {
		cmd = exec.Command("runuser", append([]string{"-u", c.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	return cmd.CombinedOutput()
}

func findBin() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p), nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(matches) == 0 {
		return "", fmt.Errorf("pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}
