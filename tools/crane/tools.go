//go:build tools

// crane builds the lab's images without a daemon (`crane append` of a
// layer onto an empty image) and serves them (`crane registry serve`), the
// registry the real nodes' containerd pulls from. Built by scripts/tools.sh.
package tools

import _ "github.com/google/go-containerregistry/cmd/crane"
