package envserver

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"

	"google.golang.org/protobuf/proto"
)

// digest hashes the environment's code (this executable) and data (tools and tasks), so that it
// changes whenever either does.
func digest(e *Environment) string {
	h := sha256.New()
	if path, err := os.Executable(); err == nil {
		if f, err := os.Open(path); err == nil {
			_, _ = io.Copy(h, f)
			f.Close()
		}
	}
	h.Write([]byte(e.Name + "\x00" + e.Version + "\x00"))
	for _, spec := range e.toolSpecs() {
		writeProto(h, spec)
	}
	for _, split := range e.splitNames() {
		h.Write([]byte(split + "\x00"))
		for _, t := range e.Tasks[split] {
			writeProto(h, t)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func writeProto(w io.Writer, m proto.Message) {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	_, _ = w.Write(b)
}
