package bolt

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/smsbatch/smsbatch/eventstore"
)

// The data directory knows what it held: a store's identity, a random ID, is kept
// inside the store (bucket "meta", key "id") and in a small file beside it
// (identity file, events.db.id). At Open, an identity file naming a store means a
// store was there, so a missing or empty store file, or one with another identity,
// is refused rather than served as a new, empty store. A file shorter than its own
// pages reach (bbolt's high-water mark in the meta page) is refused too, before
// bbolt maps it: bbolt would panic or fault on the missing pages.

// identityPath is the identity file of the store at path.
func identityPath(path string) string { return path + ".id" }

// readIdentityFile returns the store ID the identity file beside path names, or ""
// when there is none.
func readIdentityFile(path string) (string, error) {
	b, err := os.ReadFile(identityPath(path))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the identity file: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if !validStoreID(id) {
		return "", fmt.Errorf("the identity file %s does not hold a store ID (%d bytes); restore it, or remove it to take the store file as it is: %w",
			identityPath(path), len(b), eventstore.ErrCorrupt)
	}
	return id, nil
}

// writeIdentityFile writes the identity file durably: a new file, fsynced, renamed
// over the old one, and the directory fsynced.
func writeIdentityFile(path, id string) error {
	target := identityPath(path)
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(target)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write the identity file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(id + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), target)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("write the identity file %s: %w", target, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

const storeIDBytes = 16

func newStoreID() (string, error) {
	b := make([]byte, storeIDBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new store ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func validStoreID(id string) bool {
	b, err := hex.DecodeString(id)
	return err == nil && len(b) == storeIDBytes
}

// preflight refuses a store file the data directory did not hold (held is the ID
// of its identity file, "" without one), or one bbolt cannot safely map.
func preflight(path, held string) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if held != "" {
			return fmt.Errorf("the file is missing, but this data directory held event store %s (see %s): it is not replaced by a new, empty store. "+
				"Restore it from a backup, or remove %[2]s to start a new, empty store: %[3]w", held, identityPath(path), eventstore.ErrCorrupt)
		}
		return nil
	case err != nil:
		return err
	case info.Size() == 0:
		if held != "" {
			return fmt.Errorf("the file is empty (0 bytes), but this data directory held event store %s (see %s): it was emptied, and is not served as an empty store. "+
				"Restore it from a backup, or remove both files to start a new, empty store: %w", held, identityPath(path), eventstore.ErrCorrupt)
		}
		return nil // bbolt makes a new store of it
	}
	_, err = inspectFile(path, info.Size())
	return err
}

func replacedError(path, held, found string) error {
	return fmt.Errorf("the file is not the event store this data directory held: it is %s, the directory held store %s (see %s). "+
		"It was replaced: put the right file back, or remove both files to start a new, empty store: %w", found, held, identityPath(path), eventstore.ErrCorrupt)
}

// bbolt's file format, as far as the checks before opening need it: page 0 and
// page 1 each hold a meta page (a 16-byte page header, then the meta fields in
// the machine's byte order, the last of which is an FNV-64a checksum of the others).
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	metaSumOffset  = 56 // magic, version, page size, flags, root bucket (16), freelist, pgid, txid
	metaSize       = metaSumOffset + 8
	defaultPage    = 4096
)

// fileMeta is what preflight reads from a meta page.
type fileMeta struct {
	pageSize uint32
	root     uint64 // page of the root bucket
	freelist uint64 // page of the freelist
	pgid     uint64 // high-water mark: pages below it are in use or free
	txid     uint64
}

// readMeta decodes the meta page at the start of page; ok is false when it fails
// bbolt's own checks.
func readMeta(page []byte) (m fileMeta, ok bool) {
	if len(page) < pageHeaderSize+metaSize {
		return fileMeta{}, false
	}
	b := page[pageHeaderSize : pageHeaderSize+metaSize]
	e := binary.NativeEndian
	if e.Uint32(b[0:]) != boltMagic || e.Uint32(b[4:]) != boltVersion {
		return fileMeta{}, false
	}
	h := fnv.New64a()
	_, _ = h.Write(b[:metaSumOffset])
	if h.Sum64() != e.Uint64(b[metaSumOffset:]) {
		return fileMeta{}, false
	}
	return fileMeta{
		pageSize: e.Uint32(b[8:]),
		root:     e.Uint64(b[16:]),
		freelist: e.Uint64(b[32:]),
		pgid:     e.Uint64(b[40:]),
		txid:     e.Uint64(b[48:]),
	}, true
}

// inspectFile checks, before bbolt maps the file, that it is a bbolt file whose
// pages are all there: the meta page bbolt would use (the valid one with the
// higher transaction ID) must not reach past the file's end.
func inspectFile(path string, size int64) (fileMeta, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileMeta{}, err
	}
	defer f.Close()
	readPage := func(off int64) []byte {
		buf := make([]byte, pageHeaderSize+metaSize)
		n, err := f.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil
		}
		return buf[:n]
	}
	m0, ok0 := readMeta(readPage(0))
	pageSize := int64(defaultPage)
	if ok0 {
		pageSize = int64(m0.pageSize)
	}
	m1, ok1 := readMeta(readPage(pageSize))
	var m fileMeta
	switch {
	case ok0 && ok1:
		m = m0
		if m1.txid > m0.txid {
			m = m1
		}
	case ok0:
		m = m0
	case ok1:
		m = m1
	default:
		return fileMeta{}, fmt.Errorf("the file (%d bytes) is not a bbolt file, or both its meta pages are damaged: %w", size, eventstore.ErrCorrupt)
	}
	if m.pageSize < 512 || m.pageSize&(m.pageSize-1) != 0 {
		return fileMeta{}, fmt.Errorf("the file's meta page names a page size of %d bytes: %w", m.pageSize, eventstore.ErrCorrupt)
	}
	if m.pgid > uint64(size)/uint64(m.pageSize) {
		return fileMeta{}, fmt.Errorf("the file is truncated: it holds %d bytes, but its pages reach %d bytes (%d pages of %d bytes). "+
			"Restore it from a backup: %w", size, m.pgid*uint64(m.pageSize), m.pgid, m.pageSize, eventstore.ErrCorrupt)
	}
	if m.root >= m.pgid || m.freelist >= m.pgid && m.freelist != ^uint64(0) {
		return fileMeta{}, fmt.Errorf("the file's meta page points past its own pages (root %d, freelist %d, high-water mark %d): %w",
			m.root, m.freelist, m.pgid, eventstore.ErrCorrupt)
	}
	return m, nil
}
