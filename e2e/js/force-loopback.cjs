// Preloaded with `node --require` by the e2e harness: every TCP server listens on 127.0.0.1
// (or $REFLOW_E2E_BIND_HOST), whatever host the program asked for, so tests never listen beyond loopback.
'use strict';
const net = require('node:net');

const host = process.env.REFLOW_E2E_BIND_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;
const isPort = (v) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));

net.Server.prototype.listen = function forcedLoopbackListen(...args) {
  const first = args[0];
  if (first === undefined || first === null) {
    args.splice(0, 1, 0, host);
  } else if (typeof first === 'function') {
    args.unshift(0, host);
  } else if (isPort(first)) {
    if (typeof args[1] === 'string') {
      args[1] = host;
    } else {
      args.splice(1, 0, host);
    }
  } else if (typeof first === 'object' && first.path === undefined && first.fd === undefined && first.handle === undefined && first._handle === undefined) {
    args[0] = { ...first, host };
  }
  return listen.apply(this, args);
};
