package faultfs

import "syscall"

func mount(dir string, size int64) error {
	return syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, sizeOption(size))
}

func unmount(dir string) error { return syscall.Unmount(dir, syscall.MNT_DETACH) }
