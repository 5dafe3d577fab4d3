// Package registry registers servers in the rollmesh service registry (docs/protocol.md,
// "11. The bus"): NATS KV bucket "rollmesh-registry", one rollmesh.v1.ServiceRecord per key
// "<kind>.<name>.<instance_id>", re-put every TTL/3 and deleted on shutdown; the bucket's TTL
// expires the records of servers that died without deregistering.
package registry

import (
	"errors"
	"fmt"
	"log"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// Bucket is the registry's KV bucket.
	Bucket = "rollmesh-registry"
	// DefaultTTL is the bucket's TTL (max_age) when a caller creates it.
	DefaultTTL = 15 * time.Second
	// ProtocolVersion is written into records that name none.
	ProtocolVersion = "v1"
)

// A name or instance id is one KV key token: no '.', spaces or wildcards.
var keyToken = regexp.MustCompile(`^[A-Za-z0-9_\-=/]+$`)

// KindToken is the key token of a service kind: SERVICE_KIND_ENVIRONMENT -> "environment".
func KindToken(kind pb.ServiceKind) (string, error) {
	if kind == pb.ServiceKind_SERVICE_KIND_UNSPECIFIED || pb.ServiceKind_name[int32(kind)] == "" {
		return "", fmt.Errorf("a service record needs a kind, got %v", kind)
	}
	return strings.ToLower(strings.TrimPrefix(kind.String(), "SERVICE_KIND_")), nil
}

// Key is the record's key, "<kind>.<name>.<instance_id>".
func Key(record *pb.ServiceRecord) (string, error) {
	kind, err := KindToken(record.Kind)
	if err != nil {
		return "", err
	}
	for what, value := range map[string]string{"name": record.Name, "instance_id": record.InstanceId} {
		if !keyToken.MatchString(value) {
			return "", fmt.Errorf("invalid registry %s %q: use letters, digits, '-', '_', '=' or '/'", what, value)
		}
	}
	return kind + "." + record.Name + "." + record.InstanceId, nil
}

// Open binds to the registry bucket, creating it (history 1, TTL ttl, or DefaultTTL when 0)
// when it does not exist. It returns the bucket and its TTL: an existing bucket keeps its own.
func Open(nc *nats.Conn, ttl time.Duration) (nats.KeyValue, time.Duration, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	js, err := nc.JetStream()
	if err != nil {
		return nil, 0, err
	}
	kv, err := js.KeyValue(Bucket)
	if errors.Is(err, nats.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(&nats.KeyValueConfig{Bucket: Bucket, History: 1, TTL: ttl})
		if err != nil { // another server may have created it first, with its own config
			kv, err = js.KeyValue(Bucket)
		}
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cannot open the registry bucket %s: %w", Bucket, err)
	}
	status, err := kv.Status()
	if err != nil {
		return nil, 0, fmt.Errorf("cannot read the registry bucket's status: %w", err)
	}
	if status.TTL() > 0 {
		ttl = status.TTL()
	}
	return kv, ttl, nil
}

// Registration keeps records alive with a heartbeat until Close.
type Registration struct {
	kv      nats.KeyValue
	keys    []string
	records []*pb.ServiceRecord
	stop    chan struct{}
	done    sync.WaitGroup
	mu      sync.Mutex // serialises puts with Close's deletes
	closed  bool
}

// Register puts the records now and every TTL/3 until Close. Records get protocol_version
// (when empty), started_at (when unset) and a fresh heartbeat_at on every put; ttl is used when
// Register creates the bucket (0: DefaultTTL).
func Register(nc *nats.Conn, ttl time.Duration, records ...*pb.ServiceRecord) (*Registration, error) {
	kv, ttl, err := Open(nc, ttl)
	if err != nil {
		return nil, err
	}
	r := &Registration{kv: kv, stop: make(chan struct{})}
	for _, record := range records {
		key, err := Key(record)
		if err != nil {
			return nil, err
		}
		record = proto.Clone(record).(*pb.ServiceRecord)
		if record.ProtocolVersion == "" {
			record.ProtocolVersion = ProtocolVersion
		}
		if record.StartedAt == nil {
			record.StartedAt = timestamppb.Now()
		}
		r.keys, r.records = append(r.keys, key), append(r.records, record)
	}
	if err := r.put(); err != nil {
		return nil, err
	}
	r.done.Add(1)
	go r.heartbeat(ttl / 3)
	return r, nil
}

// Keys are the registered keys.
func (r *Registration) Keys() []string { return append([]string(nil), r.keys...) }

func (r *Registration) put() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	for i, record := range r.records {
		record.HeartbeatAt = timestamppb.Now()
		value, err := proto.Marshal(record)
		if err != nil {
			return err
		}
		if _, err := r.kv.Put(r.keys[i], value); err != nil {
			return fmt.Errorf("cannot put %s in the registry: %w", r.keys[i], err)
		}
	}
	return nil
}

func (r *Registration) heartbeat(every time.Duration) {
	defer r.done.Done()
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-ticker.C:
			if err := r.put(); err != nil { // NATS down or reconnecting: the TTL is the judge
				log.Printf("registry heartbeat failed: %v", err)
			}
		}
	}
}

// Close stops the heartbeat and deletes the records (deregisters). When NATS is gone the
// bucket's TTL expires them instead.
func (r *Registration) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.stop)
	var errs []string
	for _, key := range r.keys {
		if err := r.kv.Delete(key); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", key, err))
		}
	}
	r.mu.Unlock()
	r.done.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("cannot deregister %s", strings.Join(errs, "; "))
	}
	return nil
}

// List returns the live records of a kind ("" for all kinds) and name ("" for all names),
// sorted by key.
func List(nc *nats.Conn, kind pb.ServiceKind, name string) ([]*pb.ServiceRecord, error) {
	kv, _, err := Open(nc, 0)
	if err != nil {
		return nil, err
	}
	prefix := ""
	if kind != pb.ServiceKind_SERVICE_KIND_UNSPECIFIED {
		token, err := KindToken(kind)
		if err != nil {
			return nil, err
		}
		prefix = token + "."
		if name != "" {
			prefix += name + "."
		}
	}
	keys, err := kv.Keys()
	if errors.Is(err, nats.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sort.Strings(keys)
	var records []*pb.ServiceRecord
	for _, key := range keys {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		entry, err := kv.Get(key)
		if errors.Is(err, nats.ErrKeyNotFound) {
			continue // deregistered or expired since the listing
		}
		if err != nil {
			return nil, err
		}
		record := &pb.ServiceRecord{}
		if err := proto.Unmarshal(entry.Value(), record); err != nil {
			log.Printf("registry: skipping the undecodable record %s: %v", key, err)
			continue
		}
		if name == "" || record.Name == name {
			records = append(records, record)
		}
	}
	return records, nil
}
