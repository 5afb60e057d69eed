// pause holds a pod's namespaces open, as the kubelet's sandbox ("pause")
// container does: PID 1 of the pod, reaping orphans, exiting on
// SIGINT/SIGTERM. Built static (CGO_ENABLED=0) by scripts/tools.sh into the
// lab's pause image; weir's own small stand-in for registry.k8s.io/pause,
// whose C source is not a Go module.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
