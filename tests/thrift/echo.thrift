// Test service for the Thrift proxy and the HTTP gateway: every Thrift type appears once.
namespace py echo

enum Color {
  RED = 1,
  GREEN = 2,
  BLUE = 3,
}

struct Inner {
  1: required i32 id,
  2: optional string label,
}

struct Item {
  1: required string name,
  2: optional i64 count = 7,
  3: Inner inner,
  4: list<Inner> inners,
  5: map<string, i32> scores,
  6: set<string> tags,
  7: Color color = Color.GREEN,
  8: binary blob,
  9: double ratio,
  10: bool flag,
  11: byte tiny,
  12: i16 small,
  13: map<i32, list<string>> nested,
  14: optional list<map<string, Inner>> deep,
  15: optional set<Color> palette,
  16: optional map<Inner, string> keyed,
  17: optional map<bool, double> flags,
}

exception NotFound {
  1: string what,
  2: i32 code,
}

exception Invalid {
  1: string reason,
}

service Echo {
  string ping(),
  string echo(1: string text),
  Item roundtrip(1: Item item) throws (1: NotFound nf, 2: Invalid inv),
  i64 add(1: i32 a, 2: i64 b),
  string slow(1: double seconds, 2: string tag),
  oneway void fire(1: string note),
  list<string> fired(),
  string whoami(),
  string where(),
  i32 accepted(),
  list<Color> colors(1: list<Color> cs, 2: set<i32> ids, 3: map<Color, string> names),
  void nothing(),
  binary blob(1: binary data),
}
