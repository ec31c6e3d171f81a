/**
 * The device's own entry point: `fleet device` and `fleet device install-service`
 * and nothing else (no broker, dashboard or builder is loaded). bin/fleet.js
 * routes `fleet device …` here; `npm run build` bundles it alone into
 * dist/fleet-device.mjs for boards that have only Node.
 */
import { registerDeviceCommands } from './device-cli.ts';
import { createProgram, runProgram } from './program.ts';

const program = createProgram();
registerDeviceCommands(program);
runProgram(program, process.argv);
