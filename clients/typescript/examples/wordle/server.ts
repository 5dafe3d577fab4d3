// node dist/examples/wordle/server.js --port 0   (see --help of runServer for the options)
import { runServer } from "../../src/index.js";
import { wordleEnvironment } from "./env.js";

void runServer([wordleEnvironment()]);
