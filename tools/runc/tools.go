//go:build tools

// runc, the OCI runtime containerd's shim runs on the lab's real nodes.
// Built by scripts/tools.sh with cgo (its nsexec is C) and seccomp
// (libseccomp-dev): Debian 12's runc 1.1.5 fails every sandbox start here
// ("can't get final child's PID from pipe: EOF").
package tools

import _ "github.com/opencontainers/runc"
