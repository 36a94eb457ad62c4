// The `punisher/http` module. Every call returns a promise of a response; network failures
// resolve with status 0 and an `error` code, they do not reject.
const p = globalThis.__punisher;

function request(method, url, body, params) {
  if (typeof body === 'object' && body !== null && (body instanceof ArrayBuffer || ArrayBuffer.isView(body))) {
    const bytes = ArrayBuffer.isView(body)
      ? new Uint8Array(body.buffer, body.byteOffset, body.byteLength)
      : new Uint8Array(body);
    return p.http(String(method), String(url), Array.from(bytes), params, true);
  }
  return p.http(
    typeof method === 'string' ? method : String(method),
    typeof url === 'string' ? url : String(url),
    body,
    params,
    false,
  );
}

const http = {
  request,
  get: (url, params) => request('GET', url, null, params),
  head: (url, params) => request('HEAD', url, null, params),
  options: (url, body, params) => request('OPTIONS', url, body, params),
  del: (url, body, params) => request('DELETE', url, body, params),
  post: (url, body, params) => request('POST', url, body, params),
  put: (url, body, params) => request('PUT', url, body, params),
  patch: (url, body, params) => request('PATCH', url, body, params),
};

export default http;
export const { get, head, options, del, post, put, patch } = http;
export { request };
