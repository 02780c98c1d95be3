#!/usr/bin/env node
// The `liger` command. The program itself is compiled from ts/src/cli by `npm run build:ts`.
import "../dist/cli/main.js";
