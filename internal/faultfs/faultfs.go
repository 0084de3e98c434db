// Package faultfs puts storage faults in front of tests: a small file system of
// their own that fills up (a tmpfs of a given size, mounted for the test and
// unmounted after it; mounting needs root or CAP_SYS_ADMIN, and where it is not
// allowed the test is skipped, saying why), and bytes flipped in a file.
package faultfs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Mount mounts a tmpfs of size bytes in a new directory and returns the
// directory; it is unmounted when the test ends. It skips the test when the
// machine does not let it mount.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := mount(dir, size); err != nil {
		t.Skipf("%s needs a small tmpfs to fill and cannot mount one here (%v): "+
			"run it as root or with CAP_SYS_ADMIN", t.Name(), err)
	}
	t.Cleanup(func() {
		if err := unmount(dir); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// Fill writes a file under dir until the file system is full and returns its
// path; removing it frees the space again.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	if err := f.Sync(); err != nil {
		t.Logf("sync filler: %v", err)
	}
	return path
}

func sizeOption(size int64) string { return fmt.Sprintf("size=%d", size) }

// Flip flips one bit in the middle of every copy of needle in the file at path
// and returns how many it flipped; none fails the test. It writes through the
// file, so a process that has the file mapped sees the change at once. Every copy,
// because bbolt may keep older copies of a page among its free pages.
func Flip(t testing.TB, path, needle string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for off := 0; ; {
		i := bytes.Index(data[off:], []byte(needle))
		if i < 0 {
			break
		}
		at := int64(off + i + len(needle)/2)
		if _, err := f.WriteAt([]byte{data[at] ^ 0x01}, at); err != nil {
			t.Fatal(err)
		}
		n++
		off += i + len(needle)
	}
	if n == 0 {
		t.Fatalf("%q is not in %s", needle, path)
	}
	return n
}
