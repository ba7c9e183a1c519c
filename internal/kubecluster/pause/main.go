// Command pause is the sandbox ("pause") process of the test cluster's Pods:
// it holds the Pod's namespaces open, reaps any zombie handed to it, and exits
// 0 on SIGTERM or SIGINT. kubecluster builds it into a FROM-scratch image
// because the usual one cannot be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 8)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for { // reap every exited child, as PID 1 of a shared PID namespace must
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
