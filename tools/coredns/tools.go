//go:build tools

// CoreDNS, the cluster DNS the lab's real-node clusters run on weir (its
// image built by scripts/images.sh). Built by scripts/tools.sh.
package tools

import _ "github.com/coredns/coredns"
