package envserver

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

func TestHealthAndReflection(t *testing.T) {
	_, conn, _ := serve(t, Limits{}, counter(nil))
	ctx := ctxFor(t)
	health := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", ServiceName} {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v %v", service, resp, err)
		}
	}
	stream, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := &rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: ServiceName}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Errorf("reflection of %s: %v %v", ServiceName, resp, err)
	}
}

func TestShutdownDrainsThenCancels(t *testing.T) {
	client, conn, srv := serve(t, Limits{}, counter(nil))
	stream := started(t, client, ctxFor(t))
	done := make(chan struct{})
	begin := time.Now()
	go func() {
		srv.Shutdown(300 * time.Millisecond)
		close(done)
	}()
	time.Sleep(100 * time.Millisecond)
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: ServiceName})
	if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
		t.Errorf("still SERVING while shutting down")
	}
	step(t, stream, "still open") // the open episode goes on during the grace period
	if e := finalStatus(t, stream); e.code == codes.OK {
		t.Errorf("episode open past the grace period ended OK")
	}
	<-done
	if waited := time.Since(begin); waited > 3*time.Second {
		t.Errorf("shutdown took %s with a 300 ms grace", waited)
	}
}
