package envserver

import (
	"encoding/base64"
	"encoding/json"

	"github.com/rollmesh/rollmesh/clients/go/rollmesh"
	pb "github.com/rollmesh/rollmesh/clients/go/rollmeshv1"
	"google.golang.org/grpc/codes"
)

// pageToken is an opaque ListTasks page token (base64url of [env, split, offset]): clients pass
// it back, never build one.
func pageToken(env, split string, offset int) string {
	data, _ := json.Marshal([]any{env, split, offset})
	return base64.RawURLEncoding.EncodeToString(data)
}

// pageOffset is the offset a page token stands for; INVALID_PAGE_TOKEN unless it came from a
// listing of the same environment and split.
func pageOffset(token, env, split string, total int) (int, error) {
	if token == "" {
		return 0, nil
	}
	var parts []json.RawMessage
	var gotEnv, gotSplit string
	var offset int
	if data, err := base64.RawURLEncoding.DecodeString(token); err == nil &&
		json.Unmarshal(data, &parts) == nil && len(parts) == 3 &&
		json.Unmarshal(parts[0], &gotEnv) == nil && json.Unmarshal(parts[1], &gotSplit) == nil &&
		json.Unmarshal(parts[2], &offset) == nil &&
		gotEnv == env && gotSplit == split && offset >= 0 && offset <= total {
		return offset, nil
	}
	return 0, rollmesh.Error(codes.InvalidArgument, pb.ErrorReason_INVALID_PAGE_TOKEN, map[string]string{"field": "page_token"},
		"invalid page_token %s for %s/%s; pass a previous next_page_token of the same environment and split",
		rollmesh.Quoted(token), rollmesh.Quoted(env), rollmesh.Quoted(split))
}
