// Asks the NATS Services API what it knows, with the official JavaScript
// service client (@nats-io/services), and prints it as one JSON object:
//   node services.mjs NATS_URL SERVICE ID [REQUEST_SUBJECT]
// ping/info/stats: every answer to the verb with no name, with SERVICE, and
// with SERVICE and ID; request: the headers and payload of the reply to a
// request sent to REQUEST_SUBJECT, if given.
import { connect } from "@nats-io/transport-node";
import { Svcm } from "@nats-io/services";

const [url, service, id, requestSubject] = process.argv.slice(2);
const nc = await connect({ servers: url.replace(/^nats:\/\//, "") });
const client = new Svcm(nc).client({ strategy: "stall", stall: 500, maxWait: 3000 });

// Every answer; none when the server says nobody listens on the subject.
async function all(verb, ...args) {
  const answers = [];
  try {
    for await (const answer of await client[verb](...args)) answers.push(answer);
  } catch (error) {
    if (!/no responders/i.test(String(error))) throw error;
  }
  return answers;
}

const out = {};
for (const verb of ["ping", "info", "stats"]) {
  out[verb] = {
    any: (await all(verb)).filter((a) => a.name === service),
    name: await all(verb, service),
    id: await all(verb, service, id),
  };
}
if (requestSubject) {
  const reply = await nc.request(requestSubject, "x", { timeout: 5000 });
  const headers = {};
  for (const key of reply.headers ? reply.headers.keys() : []) headers[key] = reply.headers.get(key);
  out.request = { headers, payload: reply.string() };
}
console.log(JSON.stringify(out));
await nc.close();
