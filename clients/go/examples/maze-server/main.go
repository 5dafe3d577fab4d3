// Command maze-server serves the "maze" environment: the policy finds its way out of a small
// maze with the tool move(direction).
//
//	maze-server --port 0
//	maze-server --port 0 --tls-cert certs/env.pem --tls-key certs/env-key.pem --tls-ca certs/ca.pem
package main

import "github.com/rollmesh/rollmesh/clients/go/envserver"

func main() { envserver.Main(newEnvironment()) }
