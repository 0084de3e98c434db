//go:build !linux

package faultfs

import "errors"

func mount(string, int64) error { return errors.New("tmpfs is Linux only") }

func unmount(string) error { return nil }
