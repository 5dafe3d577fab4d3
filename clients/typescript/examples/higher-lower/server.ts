// node dist/examples/higher-lower/server.js --port 0   (see --help of runServer for the options)
import { runServer } from "../../src/index.js";
import { higherLowerEnvironment } from "./env.js";

void runServer([higherLowerEnvironment()]);
