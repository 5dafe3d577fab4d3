// Command digits-server serves the "digits" environment, the Go twin of the Python example
// rollmesh.examples.digits: the policy replies with a number, in one turn, and the reward is the
// share of the reply's characters that are digits. It is a replica of the Python environment:
// the same description, tasks (by id), rewards and weights; an inline task plays its own prompt.
//
//	digits-server --port 0
//	digits-server --port 0 --tls-cert certs/env.pem --tls-key certs/env-key.pem --tls-ca certs/ca.pem
package main

import "github.com/rollmesh/rollmesh/clients/go/envserver"

func main() { envserver.Main(newEnvironment()) }
