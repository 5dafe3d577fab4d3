// The package version (kept equal to package.json's by a test): 1.x speaks protocol rollmesh.v1.
export const VERSION = "1.3.0";
export const PROTOCOL_VERSION = "v1";
