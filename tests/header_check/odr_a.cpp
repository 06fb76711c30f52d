// Two translation units include the umbrella header; a duplicate non-inline definition fails the link.
#include "aqua/aqua.hpp"

int odr_b_run();

int main() {
  float q[8] = {1, 0, 0, 0, 0, 0, 0, 0}, k[8] = {1, 0, 0, 0, 0, 0, 0, 0}, v[8] = {2, 0, 0, 0, 0, 0, 0, 0},
        out[8];
  aqua::dense_decode<float>(aqua::make_view(q, 1, 8), aqua::make_view(k, 1, 1, 8),
                            aqua::make_view(v, 1, 1, 8), aqua::make_view(out, 1, 8));
  return (out[0] == 2.0f && odr_b_run() == 0) ? 0 : 1;
}
